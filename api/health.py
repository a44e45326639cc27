"""Liveness, readiness and metrics."""
from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request
from redis.exceptions import RedisError

from .auth import same_secret
from .errors import ApiError

bp = Blueprint("health", __name__)
log = logging.getLogger("inkq.api")


@bp.get("/healthz")
def healthz():
    """200 while the process runs."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 when Redis answers and the image store works (bucket reachable with these credentials), else 503."""
    ctx = current_app.extensions["inkq"]
    try:
        ctx.redis.ping()
    except RedisError:
        return jsonify({"error": "Redis does not answer.", "code": "unavailable"}), 503, {"Retry-After": "5"}
    problem = ctx.blobs.check()
    if problem:
        log.error("not ready: the image store does not work: %s", problem)
        return jsonify({"error": f"The image store does not work: {problem}.", "code": "storage_unavailable"}), \
            503, {"Retry-After": "5"}
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics():
    """Prometheus text format; needs `Bearer METRICS_TOKEN` when that is set."""
    ctx = current_app.extensions["inkq"]
    token = ctx.settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        if not same_secret(given, f"Bearer {token}"):
            raise ApiError(401, "unauthenticated", "Metrics need the metrics token.")
    return ctx.metrics.render()
