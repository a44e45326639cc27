#!/usr/bin/env bash
# Generate the TypeScript client's types from the app's own /openapi.json (openapi-typescript).
# Usage: scripts/ts_types.sh OUT.ts   (relative paths are from clients/typescript/)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV=${VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
OUT=$1
cd "$ROOT/clients/typescript"
spec=$(mktemp --suffix=.json)
trap 'rm -f "$spec"' EXIT
(cd "$ROOT" && "$VENV/bin/python" -c 'import json, sys; from api.openapi import build_spec; json.dump(build_spec(), sys.stdout, indent=2)') > "$spec"
node_modules/.bin/openapi-typescript "$spec" --output "$OUT" --alphabetize >/dev/null
