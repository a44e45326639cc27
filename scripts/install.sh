#!/usr/bin/env bash
# Create the virtualenv and install inkq with its test extras (pinned in setup.cfg).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "inkq needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[worker,test]' 2>&1 \
  | { grep -vE '^WARNING: Location|BuildBackendWarning|^\s*(return|with strategy)|^\s*$|!!|\*\*\*|Please be careful|name as your package' || true; }
echo "installed inkq into $VENV"
