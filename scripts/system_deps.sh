#!/usr/bin/env bash
# Make sure a system program exists: install its Debian package when root, else say what is missing.
# Usage: scripts/system_deps.sh PROGRAM:PACKAGE [PROGRAM:PACKAGE ...]
set -euo pipefail
missing=()
for pair in "$@"; do
  prog=${pair%%:*}; pkg=${pair#*:}
  command -v "$prog" >/dev/null 2>&1 || [ -x "/usr/bin/$prog" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
