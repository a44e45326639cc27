#!/usr/bin/env bash
# Run the worker service (every queue's worker, the CPU pool, the recovery sweep) in the foreground;
# SIGTERM = warm shutdown.
# Reads only the environment (REDIS_URL, CONCURRENCY_*, GEMINI_*, ...), the same under make, Docker and fly.io.
set -euo pipefail
exec python -m tasks.runtime.cli "$@"
