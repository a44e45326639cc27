"""inkq API: `create_app(config=None)` builds the Flask app (flaskr-style factory).

Redis, the blob store (`tasks.core.blobs`: Redis or S3), the job store, admission (limits and credits),
result links and metrics are built here and hung on `app.extensions["inkq"]`. The API enqueues
jobs by dotted name (`tasks.jobs.*`) and never imports image or provider code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from .settings import ConfigError, Settings

if TYPE_CHECKING:
    from flask import Flask
    from redis import Redis

__all__ = ["create_app", "ConfigError"]


@dataclass
class Inkq:
    """What the views share: settings and the objects built from them."""

    settings: Settings
    redis: Redis
    blobs: object
    store: object
    admission: object
    limiter: object
    read_limiter: object
    links: object
    metrics: object
    auth: object
    hub: object
    leases: object


def create_app(config: Mapping[str, str] | None = None) -> Flask:
    """Build the app from the environment, with `config` layered on top (tests pass a mapping)."""
    # Imported here, not at the top: `api.cli` patches the standard library for gevent first.
    from flask import Flask
    from redis import BlockingConnectionPool, Redis
    from redis import __version__ as redis_version
    from redis.driver_info import DriverInfo

    from tasks.core import blobs as blob_store
    from tasks.core import logs

    from . import admin, credits, errors, health, jobs, openapi, uploads, web
    from .access import RequestIds
    from .admission import Admission
    from .auth import Authenticator
    from .cors import CrossOrigin
    from .events import Hub
    from .fastpath import FastStatus
    from . import limits
    from .forwarding import TrustedProxies
    from .leases import StreamLeases
    from .links import ResultLinks
    from .metrics import Metrics
    from .store import JobStore

    settings = Settings.load(config)
    auth = Authenticator.from_settings(settings.auth, settings.plans)
    if not auth.configured and not settings.dev:
        raise ConfigError("no authentication is configured: set API_KEYS, JWT_SECRET or JWT_JWKS_URL "
                          "(INKQ_DEV=1 allows running without, for `make run` only)")
    logs.configure(settings.log.format, settings.log.level)
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # no HTML redirects for odd paths: they are JSON 404s
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes * 4 // 3 + 64 * 1024
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False
    # A bounded pool: thousands of streams woken at once queue for a connection instead of opening
    # thousands; a greenlet or thread waits up to 5 s for one. The driver's name and version are given
    # once: left to redis-py 7.4, every new connection read the package's metadata from disk (a few
    # percent of the API's CPU while 2,000 streams opened at once grew the pool).
    redis = Redis(connection_pool=BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections, timeout=5,
        socket_connect_timeout=3, socket_timeout=10, health_check_interval=30,
        driver_info=DriverInfo(name="redis-py", lib_version=redis_version)))
    try:
        blobs = blob_store.store(redis, settings.store)
    except blob_store.StoreConfigError as exc:
        raise ConfigError(str(exc)) from None
    metrics = Metrics()
    app.extensions["inkq"] = Inkq(
        settings=settings, redis=redis, blobs=blobs,
        store=JobStore(redis, settings.result_ttl_s, settings.failure_ttl_s, blobs),
        admission=Admission(redis, settings),
        limiter=limits.submissions(settings.redis_url, settings.plans, redis.connection_pool),
        read_limiter=limits.reads(settings.redis_url, settings.read_rate_limit, redis.connection_pool),
        links=ResultLinks(settings.secret_key, settings.result_url_ttl_s, blobs),
        metrics=metrics, auth=auth, hub=Hub(settings.redis_url),
        leases=StreamLeases(redis, settings.max_streams_per_user, settings.events_poll_s))
    # GET /status/<id> is most of the traffic: served below Flask (api/fastpath.py); cross-origin headers
    # wrap both (api/cors.py), after the trusted proxies' headers are applied (api/forwarding.py), and
    # every response carries a request id and gets an access line (api/access.py)
    app.wsgi_app = FastStatus(app.wsgi_app, app.extensions["inkq"])
    if settings.cors_origins:
        app.wsgi_app = CrossOrigin(app.wsgi_app, settings.cors_origins)
    app.wsgi_app = RequestIds(TrustedProxies(app.wsgi_app, settings.forwarded_allow), access=settings.access_log)
    errors.init_app(app)
    metrics.init_app(app, lambda: admin.queue_stats(redis), redis, settings.queue_max_depth)
    for blueprint in (jobs.bp, uploads.bp, credits.bp, admin.bp, health.bp, web.bp):
        app.register_blueprint(blueprint)
    admin.init_app(app)
    admin.mount_dashboard(app, settings.redis_url)
    openapi.init_app(app)
    logger = logging.getLogger("inkq.api")
    problem = blobs.check()
    if problem:
        logger.error("the image store does not work: %s (/readyz answers 503 until it does)", problem)
    logger.info("inkq api ready (redis %s, blob store %s)", settings.redis_url.split("@")[-1], blobs.kind)
    return app
