#!/usr/bin/env bash
# Serve the API with gunicorn (gevent workers) on HOST:PORT (default 0.0.0.0:8000). Reads only the environment
# (see api/cli.py for WEB_CONCURRENCY, GUNICORN_WORKER_CONNECTIONS); the same under make, Docker and fly.io.
set -euo pipefail
exec python -m api.cli "$@"
