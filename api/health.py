"""Liveness, readiness and metrics."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from redis.exceptions import RedisError

from .auth import same_secret
from .errors import ApiError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process runs."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """200 when Redis answers, else 503."""
    try:
        current_app.extensions["inkq"].redis.ping()
    except RedisError:
        return jsonify({"error": "Redis does not answer.", "code": "unavailable"}), 503, {"Retry-After": "5"}
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
