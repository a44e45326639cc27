#!/usr/bin/env bash
# Time the local engines on one core: a 12 MP JPEG through decode → stencil → PNG beside a Canny reference.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
pin=()
if command -v taskset >/dev/null 2>&1; then
  pin=(taskset -c 0)
fi
exec "${pin[@]}" "$VENV/bin/python" scripts/bench_engine.py "$@"
