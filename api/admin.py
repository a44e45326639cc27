"""Admin surfaces: queue statistics, credits, and rq-dashboard mounted at /admin/rq/.

rq-dashboard leaves authentication to its host app (its own docstring says so): every request
under /admin/rq/ needs the admin token, as a Bearer token or as the HTTP Basic password
(browsers). Its state-changing actions are accepted only as POST.
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import ValidationError
from rq import Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tasks import metrics as job_metrics
from tasks import recovery
from tasks.queues import QUEUES

from .errors import ApiError, bad_request, error_response
from .guard import check_admin, require_admin
from .schemas import CreditChange

bp = Blueprint("admin", __name__, url_prefix="/admin")
DASHBOARD_PREFIX = "/admin/rq"


def _count(redis, key: str, kind: str) -> int:
    return int(redis.zcard(key) if kind == "zset" else redis.llen(key))


def queue_stats(redis, env) -> dict:
    """Counts per queue, read straight from the registries' keys (no clean-up is triggered).

    `waiting` counts the queue and the ids workers have claimed but not yet started.
    """
    workers = Worker.all(connection=redis, serializer=JSONSerializer)
    waiting = recovery.waiting_counts(redis, [spec.name for spec in QUEUES.values()])
    stats = {}
    pipe = redis.pipeline()
    for spec in QUEUES.values():
        for registry_class in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, ScheduledJobRegistry):
            pipe.zcard(registry_class(spec.name, connection=redis, serializer=JSONSerializer).key)
    counts = pipe.execute()
    gauges = job_metrics.queue_gauges(redis, [spec.name for spec in QUEUES.values()])
    snapshot = job_metrics.read(redis)
    for i, spec in enumerate(QUEUES.values()):
        active, completed, failed, scheduled = counts[i * 4:(i + 1) * 4]
        stats[spec.name] = {
            "waiting": waiting[spec.name], "active": active, "completed": completed, "failed": failed,
            "scheduled": scheduled,
            "workers": sum(1 for w in workers if spec.name in w.queue_names()),
            "concurrency": spec.concurrency(env),
            **gauges[spec.name],
            **job_metrics.summary(snapshot, spec.name),
        }
    return stats


@bp.get("/queue-stats")
@require_admin
def stats():
    """Per queue: waiting, active, completed, failed, scheduled, workers, concurrency (API.md), then the oldest
    waiting job's age, live workers, outcome totals, and run and queue-wait times."""
    ctx = current_app.extensions["inkq"]
    return jsonify(queue_stats(ctx.redis, ctx.settings.env))


@bp.post("/credits/<user_id>")
@require_admin
def change_credits(user_id: str):
    """Add to or set a user's balance."""
    if not 0 < len(user_id) <= 200:
        raise bad_request("Bad user id.")
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:
        body = None
    try:
        change = CreditChange.model_validate(body)
    except ValidationError:
        raise bad_request("Send {\"add\": n} or {\"set\": n} with an integer n.") from None
    if (change.add is None) == (change.set is None):
        raise bad_request("Send exactly one of `add` or `set`.")
    balance = current_app.extensions["inkq"].admission.change(user_id, add=change.add, set_to=change.set)
    return jsonify({"balance": balance})


def mount_dashboard(app: Flask, redis_url: str) -> None:
    """Mount rq-dashboard at /admin/rq/ behind the admin check, with the JSON serializer."""
    import rq_dashboard
    from rq_dashboard import web as dashboard

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = [redis_url]
    dashboard.config.serializer = JSONSerializer
    app.register_blueprint(dashboard.blueprint, url_prefix=DASHBOARD_PREFIX)
    dashboard.setup_rq_connection(app)

    @app.before_request
    def _dashboard_admin_only():
        if request.path != DASHBOARD_PREFIX and not request.path.startswith(DASHBOARD_PREFIX + "/"):
            return None
        try:
            check_admin(allow_basic=True)
        except ApiError as exc:
            if exc.status != 401:
                raise
            response = error_response(401, exc.code, exc.message)
            response.headers["WWW-Authenticate"] = 'Basic realm="inkq admin"'
            return response
        if request.method in ("GET", "HEAD") and (request.endpoint or "").endswith(".requeue_all"):
            raise ApiError(405, "method_not_allowed", "This action needs POST.")
        return None
