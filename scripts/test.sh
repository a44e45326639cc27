#!/usr/bin/env bash
# Run the whole suite. tests/conftest.py starts a throwaway redis-server on a free port and real
# rq worker processes; nothing on this machine's own Redis is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
scripts/system_deps.sh redis-server:redis-server
if ! scripts/system_deps.sh chromium:chromium; then
  echo "chromium is missing: the browser test will be skipped" >&2
fi
if ! scripts/system_deps.sh node:nodejs npm:npm; then  # the TypeScript client's tests (tests/test_ts_client.py)
  echo "node or npm is missing: the TypeScript client's tests will be skipped" >&2
fi
scripts/system_deps.sh potrace:potrace  # SVG stencils (tasks/vector.py)
if ! scripts/system_deps.sh promtool:prometheus; then
  echo "promtool is missing: the alert rules check will be skipped" >&2
fi
export PATH="$PWD/$VENV/bin:$PATH"
exec "$VENV/bin/python" -m pytest "$@"
