#!/usr/bin/env bash
# `make run`: a local inkq. Starts a redis-server when REDIS_URL is unset and nothing answers on
# 6379, then the API and the workers; prints the URL, a dev API key and a curl example.
# Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
RUN_DIR=${RUN_DIR:-.run}
mkdir -p "$RUN_DIR"
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping inkq..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped."
}
trap cleanup INT TERM EXIT

redis_answers() { python - "$1" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

scripts/system_deps.sh potrace:potrace || echo "potrace is missing: stencils with format svg will fail" >&2

if [ -z "${REDIS_URL:-}" ]; then
  REDIS_URL="redis://127.0.0.1:6379/0"
  if redis_answers "$REDIS_URL"; then
    echo "using the Redis already answering on 127.0.0.1:6379"
  else
    scripts/system_deps.sh redis-server:redis-server
    echo "starting a local redis-server on 127.0.0.1:6379 (data in $RUN_DIR/)"
    redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN_DIR" \
      --logfile "$PWD/$RUN_DIR/redis.log" & pids+=($!)
    for _ in $(seq 50); do redis_answers "$REDIS_URL" && break; sleep 0.1; done
  fi
fi
export REDIS_URL
export INKQ_DEV=1
export HOST=${HOST:-127.0.0.1} PORT=${PORT:-8000}
export LOG_FORMAT=${LOG_FORMAT:-text}
DEV_KEY=${DEV_KEY:-dev-$(python -c 'import secrets; print(secrets.token_hex(8))')}
export API_KEYS=${API_KEYS:-$DEV_KEY:dev}
export ADMIN_TOKEN=${ADMIN_TOKEN:-admin-$DEV_KEY}
export SECRET_KEY=${SECRET_KEY:-$(python -c 'import secrets; print(secrets.token_hex(32))')}
export WEB_CONCURRENCY=${WEB_CONCURRENCY:-1}
# API and workers share this machine: local engine work yields the cores to the API (README, WORKER_NICE)
export WORKER_NICE=${WORKER_NICE:-10}

scripts/start_workers.sh > "$RUN_DIR/workers.log" 2>&1 & pids+=($!)
scripts/start_api.sh > "$RUN_DIR/api.log" 2>&1 & pids+=($!)
URL="http://$HOST:$PORT"
for _ in $(seq 100); do
  python -c "import urllib.request,sys; urllib.request.urlopen('$URL/readyz', timeout=1)" 2>/dev/null && break
  sleep 0.2
done
cat <<MSG

  inkq is running at $URL   (logs in $RUN_DIR/api.log and $RUN_DIR/workers.log)
  dev API key:   $DEV_KEY        (user "dev")
  admin token:   $ADMIN_TOKEN    (rq-dashboard: $URL/admin/rq/ , any user name, this as password)

  Try it:
    curl -s -H "Authorization: Bearer $DEV_KEY" -F image=@photo.jpg $URL/generate
    curl -s -H "Authorization: Bearer $DEV_KEY" $URL/status/<jobId>
    curl -s -H "Authorization: Bearer $DEV_KEY" -o stencil.png $URL/result/<jobId>
  or open $URL/ in a browser.  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}" || true
