#!/usr/bin/env bash
# `make bench`: (1) the local engines on one core: a 12 MP JPEG through decode → stencil → PNG beside a
# Canny reference; (2) the service: POST /generate latency beside GET /healthz, and a 512x512 stencil job;
# (3) recovery: kill -> completed on another worker service, beside the same job uninterrupted;
# (4) the read path at the seed's scale (saturation, 2,500 polls/s, busy workers, 2,000 event streams)
# beside the naive baseline scripts/naive_api.py, in the same run; (5) the image store: Redis memory per
# finished 12 MP job with BLOB_STORE=redis and =s3 (SeaweedFS), and direct upload beside multipart; (6) the
# 500-user burst of Gemini stencils beside the API alone, idle memory, and local jobs/s beside the engine
# alone on the same cores, in the same run, with how close each submission's etaS came; (7) the fair order:
# ten users beside one with 50 queued jobs, and a status read's cost with 10,000 waiting jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
scripts/system_deps.sh redis-server:redis-server
scripts/system_deps.sh wrk:wrk || echo "wrk is missing: the polling load figure is skipped" >&2
scripts/system_deps.sh hey:hey || echo "hey is missing: the read-path benchmark cannot run" >&2
pin=()
if command -v taskset >/dev/null 2>&1; then
  pin=(taskset -c 0)
fi
echo "== local engine (one core) =="
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 "${pin[@]}" "$VENV/bin/python" scripts/bench_engine.py "$@"
echo
echo "== service (API under gunicorn, real workers) =="
"$VENV/bin/python" scripts/bench_api.py
echo
echo "== recovery (two worker services, one SIGKILLed mid-job) =="
"$VENV/bin/python" scripts/bench_recovery.py
echo
echo "== image store (Redis memory per job, redis and s3; direct upload beside multipart) =="
"$VENV/bin/python" scripts/bench_blobs.py
echo
echo "== read path (inkq beside the naive baseline, hey on the same box) =="
if command -v hey >/dev/null 2>&1; then
  "$VENV/bin/python" scripts/bench_read.py
fi
echo
echo "== jobs in threads (burst, memory, local jobs/s) =="
"$VENV/bin/python" scripts/bench_burst.py
echo
echo "== fair order (light users beside a heavy one; a status read beside the queue's length) =="
"$VENV/bin/python" scripts/bench_fair.py
