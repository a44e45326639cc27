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
if [ "$#" -gt 0 ] && [ "${INKQ_TEST_PARTS:-}" != 1 ]; then  # a developer's own selection: one plain run
  exec "$VENV/bin/python" -m pytest "$@"
fi
# The whole suite (or INKQ_TEST_PARTS=1 with extra options), in two parts: the tests that do not measure
# time, load or memory, on two pytest-xdist processes (each with its own Redis, worker service and fake
# provider; the TypeScript client's npm pack is built once for both, under a file lock), then the `serial`
# ones alone (tests/conftest.py names them and why). INKQ_TEST_PROCESSES=1 runs the first part without xdist.
PROCS=${INKQ_TEST_PROCESSES:-2}
status=0
if [ "$PROCS" -gt 1 ]; then
  "$VENV/bin/python" -m pytest -n "$PROCS" -m "not serial" "$@" || status=$?
else
  "$VENV/bin/python" -m pytest -m "not serial" "$@" || status=$?
fi
"$VENV/bin/python" -m pytest -m serial "$@" || status=$((status ? status : $?))
exit "$status"
