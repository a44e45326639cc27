#!/usr/bin/env bash
# Build both images: Dockerfile.api -> inkq-api, Dockerfile.worker -> inkq-worker, then print their sizes.
# Engine: docker when a Docker engine answers, else podman (installed with apt-get when root), run with
# runc (crun cannot run on hybrid cgroups) and ulimits low enough to be permitted here.
# When the FROM image cannot be pulled (no registry access), a stand-in for it is built from Debian
# bookworm with mmdebstrap (python3 is 3.11 there, as in the FROM image), tagged with the FROM name,
# and a message says so. INKQ_STANDIN_BASE=1 skips the pull (stand-in if the base is missing), =0 forbids it.
# Usage: scripts/build_images.sh [api|worker ...]   (default: both)
#        scripts/build_images.sh --engine           (print the engine command, then the ulimit options for
#                                                     build and run, each on one line)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "build_images: $*" >&2; }

# The engine command, as words in ENGINE (e.g. `podman --runtime runc`), or fail with the reason.
pick_engine() {
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=(docker); return
  fi
  command -v docker >/dev/null 2>&1 && say "docker is installed but no Docker engine answers; trying podman"
  if ! scripts/system_deps.sh podman:podman runc:runc; then
    say "no container engine can build here: no Docker engine answers and podman is missing"; exit 1
  fi
  ENGINE=(podman)
  if [ -n "${INKQ_OCI_RUNTIME-runc}" ]; then ENGINE+=(--runtime "${INKQ_OCI_RUNTIME-runc}"); fi
  if ! "${ENGINE[@]}" info >/dev/null 2>&1; then
    say "no container engine can build here: '${ENGINE[*]} info' fails:"
    "${ENGINE[@]}" info 2>&1 | tail -3 >&2 || true; exit 1
  fi
}

pick_engine
# podman-only options: ulimits no higher than what runc may set here (podman's defaults and even this
# shell's nproc hard limit are refused: "error setting rlimit"); pip inside RUN steps gets the host's
# CA bundle and pip configuration (index, proxy, cert), mounted for the build only.
ULIMITS=()
if [ "${ENGINE[0]}" = podman ]; then
  for spec in nofile:n:20000 nproc:u:32768; do
    IFS=: read -r name flag cap <<<"$spec"
    hard=$(ulimit -H"$flag")
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$cap" ]; then cap=$hard; fi
    ULIMITS+=(--ulimit "$name=$cap:$cap")
  done
fi
if [ "${1:-}" = "--engine" ]; then echo "${ENGINE[*]}"; echo "${ULIMITS[*]}"; exit 0; fi

BUILD_OPTS=("${ULIMITS[@]}")
if [ "${ENGINE[0]}" = podman ]; then
  for path in /etc/ssl/certs /etc/pip.conf /etc/xdg/pip; do
    if [ -e "$path" ]; then BUILD_OPTS+=(--volume "$path:$path:ro"); fi
  done
  BUILD_OPTS+=(--pull=never)
  if [ -n "${PIP_INDEX_URL:-}" ]; then say "note: PIP_INDEX_URL is not passed in; put it in /etc/pip.conf"; fi
fi

BASE=$(awk 'toupper($1) == "FROM" {print $2; exit}' Dockerfile.api)
case "$BASE" in */*) FULL_BASE=$BASE ;; *) FULL_BASE=docker.io/library/$BASE ;; esac

# Whether the FROM image here is the stand-in this script builds (its import message says so).
is_standin() {
  "${ENGINE[@]}" image inspect --format '{{.Comment}}' "$FULL_BASE" 2>/dev/null | grep -q inkq-standin
}

# The FROM image: present, pulled, or (when pulling fails, or INKQ_STANDIN_BASE=1) a local stand-in.
ensure_base() {
  if "${ENGINE[@]}" image inspect "$FULL_BASE" >/dev/null 2>&1; then
    if is_standin; then say "using the STAND-IN for $FULL_BASE built earlier (not the official image)"; fi
    return 0
  fi
  if [ "${INKQ_STANDIN_BASE:-}" != 1 ] && timeout 600 "${ENGINE[@]}" pull "$FULL_BASE" >&2; then return 0; fi
  if [ "${INKQ_STANDIN_BASE:-}" = 0 ]; then
    say "cannot pull $FULL_BASE and INKQ_STANDIN_BASE=0 forbids a stand-in"; exit 1
  fi
  say "cannot pull $FULL_BASE: building a STAND-IN for it from Debian bookworm with mmdebstrap" \
      "(python3 3.11, python3-venv, ca-certificates); the images built on it are not the official base"
  scripts/system_deps.sh mmdebstrap:mmdebstrap || { say "cannot build the stand-in without mmdebstrap"; exit 1; }
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    --customize-hook='chroot "$1" ln -sf /usr/bin/python3 /usr/local/bin/python' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm - http://deb.debian.org/debian </dev/null \
    | "${ENGINE[@]}" import --message "inkq-standin for $BASE" - "$FULL_BASE" >/dev/null
  say "stand-in base tagged $FULL_BASE"
}
ensure_base

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(api worker)
for target in "${targets[@]}"; do
  case "$target" in api|worker) ;; *) say "unknown image '$target' (api or worker)"; exit 2 ;; esac
  say "building inkq-$target from Dockerfile.$target with ${ENGINE[*]}"
  "${ENGINE[@]}" build "${BUILD_OPTS[@]}" -f "Dockerfile.$target" -t "inkq-$target" . >&2
done
for target in "${targets[@]}"; do
  bytes=$("${ENGINE[@]}" image inspect --format '{{.Size}}' "inkq-$target")
  echo "inkq-$target $((bytes / 1000000)) MB"
done
