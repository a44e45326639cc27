"""`inkq-api`: serve the API with gunicorn on HOST:PORT, configured only from the environment.

gthread workers: status polling and event streams are I/O bound, so threads are cheap;
WEB_CONCURRENCY processes (default 2) x GUNICORN_THREADS threads (default 32).
"""
from __future__ import annotations

import logging
import os
import sys

from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from . import create_app

        return create_app()


def options(env) -> dict:
    """gunicorn settings from the environment."""
    return {
        "bind": f"{env.get('HOST') or '0.0.0.0'}:{env.get('PORT') or '8000'}",
        "worker_class": "gthread",
        "workers": int(env.get("WEB_CONCURRENCY") or 2),
        "threads": int(env.get("GUNICORN_THREADS") or 32),
        "timeout": int(env.get("GUNICORN_TIMEOUT") or 60),
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": env.get("ACCESS_LOG", "-") or None,
        "forwarded_allow_ips": env.get("FORWARDED_ALLOW_IPS") or "127.0.0.1",
        "preload_app": True,
    }


def main() -> int:
    """Check the configuration, then serve."""
    from . import create_app
    from .settings import ConfigError

    from tasks.durability import warn_if_unsafe

    try:
        app = create_app()
    except (ConfigError, ValueError) as exc:
        print(f"inkq-api: configuration error: {exc}", file=sys.stderr)
        return 2
    ctx = app.extensions["inkq"]
    warn_if_unsafe(ctx.redis, dev=ctx.settings.dev, logger=logging.getLogger("inkq.api"))
    _Server(options(os.environ)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
