"""`inkq-api`: serve the API with gunicorn on HOST:PORT, configured only from the environment.

gevent workers (`api.server.Worker`: gunicorn's `gevent_pywsgi` with read deadlines and shedding of
slow clients): status reads and event streams wait on Redis and on clients, so each request and
each open stream is a greenlet, not a thread; an open stream costs a few tens of KB and no thread.
WEB_CONCURRENCY processes (default 2), each holding up to GUNICORN_WORKER_CONNECTIONS connections
(default 5000). The standard library is patched for gevent before anything else is imported, so
the app (preloaded once, shared by the workers) is built on cooperative sockets.
"""
from __future__ import annotations

import functools
import gc
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import ServerSettings


def options(server: "ServerSettings") -> dict:
    """gunicorn settings from the server's settings (`api.settings.ServerSettings`)."""
    return {
        "bind": f"{server.host}:{server.port}",
        "worker_class": "api.server.Worker",  # gevent_pywsgi with read deadlines and shedding
        "workers": server.processes,
        "worker_connections": server.worker_connections,
        "timeout": server.timeout_s,
        "graceful_timeout": 20,
        "keepalive": 5,
        "backlog": 4096,
        "accesslog": None,  # access lines come from the app (api/access.py), with user and request id
        "logger_class": "api.cli.GunicornLogger",
        "forwarded_allow_ips": server.forwarded_allow_ips,
        "preload_app": True,
        "when_ready": freeze_heap,
    }


def freeze_heap(server=None) -> None:
    """gunicorn's when_ready hook (once, after the preload, before the first fork): move the preloaded
    app's objects out of the garbage collector's view.

    Every full collection walked the whole preloaded app (about 85,000 objects) and held the process,
    with every request it was serving, for 55-165 ms: the tail of submit latency under a burst.
    Frozen objects are never walked again, and the forked workers' pages stay shared.
    """
    gc.collect()
    gc.freeze()


@functools.cache
def _gunicorn_logger_class():
    from gunicorn import glogging

    class GunicornLogger(glogging.Logger):
        """gunicorn's loggers, emptied of their own handlers: their lines go through the root handler
        (`tasks.core.logs`), as JSON with LOG_FORMAT=json."""

        def setup(self, cfg):
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)
                logger.propagate = True

    return GunicornLogger


def __getattr__(name: str):
    """`api.cli.GunicornLogger`, built on first use so that importing this module imports no gunicorn."""
    if name == "GunicornLogger":
        return _gunicorn_logger_class()
    raise AttributeError(name)


def main() -> int:
    """Patch for gevent, check the configuration, then serve."""
    from gevent import monkey

    monkey.patch_all()

    import logging

    from gunicorn.app.base import BaseApplication

    from tasks.core import logs
    from tasks.core.durability import warn_if_unsafe

    from . import create_app
    from .server import set_deadlines
    from .settings import ConfigError, ServerSettings

    class Server(BaseApplication):
        def __init__(self, settings: dict):
            self.settings = settings
            super().__init__()

        def load_config(self):
            for key, value in self.settings.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app()

    logs.configure()
    try:
        server = ServerSettings.from_env()
        app = create_app()
    except (ConfigError, ValueError) as exc:
        print(f"inkq-api: configuration error: {exc}", file=sys.stderr)
        return 2
    ctx = app.extensions["inkq"]
    warn_if_unsafe(ctx.redis, dev=ctx.settings.dev, logger=logging.getLogger("inkq.api"))
    if not ctx.settings.public_url and not ctx.settings.dev:
        logging.getLogger("inkq.api").warning(
            "PUBLIC_URL is not set: signed result URLs take their origin from each request's Host header")
    set_deadlines(server.header_timeout_s, server.body_timeout_s)
    Server(options(server)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
