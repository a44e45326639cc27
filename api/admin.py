"""Admin surfaces: queue statistics, credits, a user's erasure, and rq-dashboard mounted at /admin/rq/.

rq-dashboard leaves authentication to its host app (its own docstring says so): every request
under /admin/rq/ needs the admin token, as a Bearer token or as the HTTP Basic password
(browsers). Its state-changing actions are accepted only as POST.

Browsers resend cached Basic credentials on any request to the host, a cross-site form POST
included, so every request under /admin/ other than GET, HEAD and OPTIONS must prove it comes from
this origin (`same_origin`), else 403 `forbidden`: `Sec-Fetch-Site` when the browser sends it
(`same-origin`, or `none` for the user's own action), else `Origin`, else `Referer`, compared with
the scheme and host Flask sees for the request. A request without credentials is left to the
admin check (401). One carrying none of these headers comes from no web page; it is let through
only with a Bearer token, which no browser adds on its own (and a page on
another origin cannot add without a CORS preflight, never answered on /admin/).

rq-dashboard 0.9.0 renders a job's description, metadata, result and exception, and a worker's
current call string (the job's arguments, a prompt included), into HTML unescaped (`<%= %>` in
its underscore templates, then `innerHTML`). So the two JSON endpoints those pages read
(`job_info`, `list_workers`) leave here with every string HTML-escaped, and every /admin/ response
carries a Content-Security-Policy: scripts only from the dashboard's own static files and its one
inline block (given a per-response nonce; its templates need `'unsafe-eval'` for
`_.template`), so an injected `onerror=` or `<script>` does not run even if some text is missed.
Admin pages may not be framed (`frame-ancestors 'none'`, `X-Frame-Options: DENY`).

rq-dashboard 0.9.0 lists workers without its configured serializer; `JsonWorker` makes it read a
busy worker's job as JSON, as every inkq job is stored.
"""
from __future__ import annotations

import html
import json
import logging
import secrets
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import ValidationError
from rq import Worker
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tasks.core import fairness
from tasks.core import metrics as job_metrics
from tasks.core.queues import QUEUES

from .auth import valid_user_id
from .errors import ApiError, bad_request, error_response
from .guard import check_admin, require_admin
from .schemas import CreditChange

bp = Blueprint("admin", __name__, url_prefix="/admin")
log = logging.getLogger("inkq.api")
DASHBOARD_PREFIX = "/admin/rq"
ADMIN_PREFIX = "/admin/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_SITES = frozenset({"same-origin", "none"})
# rq-dashboard 0.9.0's endpoints whose JSON its pages insert into HTML unescaped
RAW_RENDERED = frozenset({"rq_dashboard.job_info", "rq_dashboard.list_workers"})
# rq-dashboard 0.9.0's base.html: its one inline script, which the CSP admits by nonce
INLINE_SCRIPT = '<script type="text/javascript">'
CSP = ("default-src 'none'; script-src 'self' 'nonce-{nonce}' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'none'")


def _count(redis, key: str, kind: str) -> int:
    return int(redis.zcard(key) if kind == "zset" else redis.llen(key))


def queue_stats(redis) -> dict:
    """Counts per queue, read straight from the registries' keys (no clean-up is triggered).

    `waiting` counts the queue and the ids workers have claimed but not yet started. `concurrency` is
    what the running worker services publish (`tasks.core.metrics.queue_gauges`: the slots of the queue's
    live workers, summed), never the API's own idea of CONCURRENCY_*: 0 while no worker runs the queue.
    `runS` is the p50 of the queue's last 100 completed runs (null before any) and `users` the users with jobs
    waiting in its fair order (`tasks.core.fairness.stats`).
    """
    workers = Worker.all(connection=redis, serializer=JSONSerializer)
    waiting = job_metrics.waiting_counts(redis, [spec.name for spec in QUEUES.values()])
    stats = {}
    pipe = redis.pipeline()
    for spec in QUEUES.values():
        for registry_class in (StartedJobRegistry, FinishedJobRegistry, FailedJobRegistry, ScheduledJobRegistry):
            pipe.zcard(registry_class(spec.name, connection=redis, serializer=JSONSerializer).key)
    counts = pipe.execute()
    gauges = job_metrics.queue_gauges(redis, [spec.name for spec in QUEUES.values()])
    fair = fairness.stats(redis, [spec.name for spec in QUEUES.values()])
    snapshot = job_metrics.read(redis)
    for i, spec in enumerate(QUEUES.values()):
        active, completed, failed, scheduled = counts[i * 4:(i + 1) * 4]
        stats[spec.name] = {
            "waiting": waiting[spec.name], "active": active, "completed": completed, "failed": failed,
            "scheduled": scheduled,
            "workers": sum(1 for w in workers if spec.name in w.queue_names()),
            "concurrency": gauges[spec.name].pop("concurrency"),
            **fair[spec.name],
            **gauges[spec.name],
            **job_metrics.summary(snapshot, spec.name),
        }
    return stats


@bp.get("/queue-stats")
@require_admin
def stats():
    """Per queue: waiting, active, completed, failed, scheduled, workers, concurrency, runS, users (API.md), then the oldest
    waiting job's age, live workers, outcome totals, and run and queue-wait times."""
    ctx = current_app.extensions["inkq"]
    return jsonify(queue_stats(ctx.redis))


@bp.post("/credits/<user_id>")
@require_admin
def change_credits(user_id: str):
    """Add to or set a user's balance."""
    if not valid_user_id(user_id):
        raise bad_request("Bad user id: an API key's user id, or jwt:<sub> for a JWT user.")
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


@bp.delete("/users/<user_id>/data")
@require_admin
def erase_user(user_id: str):
    """Erase everything of a user: their jobs (canceled first if running), uploads, idempotency keys, stream leases,
    counters and credit balance; `{"jobs", "objects"}`. One log line names the user and the counts."""
    if not valid_user_id(user_id):
        raise bad_request("Bad user id: an API key's user id, or jwt:<sub> for a JWT user.")
    ctx = current_app.extensions["inkq"]
    jobs, objects = ctx.store.erase_user(user_id, webhook_retry_s=ctx.settings.webhook_retry_s)
    for job_id in jobs:
        ctx.hub.changed(job_id)
    log.info("erased the data of user %s at an admin's request: %d jobs, %d image objects", user_id, len(jobs),
             objects)
    return jsonify({"jobs": len(jobs), "objects": objects})


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin() -> bool:
    """Whether this request provably comes from a page of this service, or from no web page with a Bearer token."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in SAME_ORIGIN_SITES
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if claimed is not None:
        return _origin(claimed) == _origin(request.host_url)
    return request.headers.get("Authorization", "").lstrip().lower().startswith("bearer ")


def _escaped(value):
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    return value


def init_app(app: Flask) -> None:
    """Refuse cross-site state changes under /admin/; escape and confine what admin pages render."""

    @app.before_request
    def _admin_same_origin_only():
        if (request.path.startswith(ADMIN_PREFIX) and request.method not in SAFE_METHODS
                and "Authorization" in request.headers and not same_origin()):
            return error_response(403, "forbidden", "Admin actions must come from this service's own pages.")
        return None

    @app.after_request
    def _admin_page_headers(response):
        if not request.path.startswith(ADMIN_PREFIX):
            return response
        nonce = secrets.token_urlsafe(16)
        response.headers["Content-Security-Policy"] = CSP.format(nonce=nonce)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if response.direct_passthrough or response.is_streamed:
            return response
        if response.mimetype == "text/html":
            page = response.get_data(as_text=True)
            response.set_data(page.replace(INLINE_SCRIPT, f'<script nonce="{nonce}" type="text/javascript">'))
        elif request.endpoint in RAW_RENDERED and response.is_json:
            response.set_data(json.dumps(_escaped(response.get_json())))
        return response


class JsonWorker(Worker):
    """rq's Worker whose `all()` reads each worker's current job with the JSON serializer unless told otherwise.

    rq-dashboard 0.9.0 applies its configured serializer to queues and jobs but lists workers with
    `Worker.all(connection=...)` (`list_workers`, the JSON its workers page polls, and
    `workers_overview`), so each worker gets rq's default pickle serializer. inkq's jobs are JSON:
    `list_workers` calls `worker.get_current_job().get_call_string()` for a busy worker, pickle
    fails on the JSON payload (`DeserializationError`), and the listing answers 500 for as long as
    any job runs. `mount_dashboard` puts this class where rq-dashboard's module looks up `Worker`.
    """

    @classmethod
    def all(cls, *args, serializer=None, **kwargs):
        """Every registered worker, reading its jobs with `serializer` (JSON when none is given)."""
        return super().all(*args, serializer=serializer or JSONSerializer, **kwargs)


def mount_dashboard(app: Flask, redis_url: str) -> None:
    """Mount rq-dashboard at /admin/rq/ behind the admin check, with the JSON serializer."""
    import rq_dashboard
    from rq_dashboard import web as dashboard

    app.config.from_object(rq_dashboard.default_settings)
    app.config["RQ_DASHBOARD_REDIS_URL"] = [redis_url]
    dashboard.config.serializer = JSONSerializer
    dashboard.Worker = JsonWorker
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
