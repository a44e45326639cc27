"""Job endpoints: submit, status (polling and server-sent events), result, list, cancel, erase."""
from __future__ import annotations

import logging
from functools import partial

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request

from tasks import webhooks
from tasks.core import keys
from tasks.core.queues import QUEUES

from . import idempotency, uploads
from .access import ENVIRON_ID
from .events import open_stream
from .errors import ApiError, bad_request, not_found
from .forwarding import origin
from .guard import require_user
from .limits import limit_reads
from .schemas import JobsQuery
from .status import COMPLETED, SVG_SUFFIX, describe, word_of
from .store import new_job_id
from .submission import parse

bp = Blueprint("jobs", __name__)
log = logging.getLogger("inkq.api")


def _ctx():
    return current_app.extensions["inkq"]


def _url_maker():
    """A function giving a job's signed result URL, absolute on PUBLIC_URL or this request's host."""
    base = origin(request.environ, _ctx().settings.public_url)
    links = _ctx().links
    return lambda name, value=None: links.url(base, name, value)


def _owned(job_id: str):
    job = _ctx().store.fetch(job_id, g.principal.user_id)
    if job is None:
        raise not_found()
    return job


def _engine_for(operation: str, asked: str | None) -> str:
    """The engine a job will use; color-match is always local, ia-gen always needs the provider."""
    if operation == "color-match":
        return "local"
    settings = _ctx().settings
    engine = asked or settings.engine
    if engine == "auto":
        engine = "gemini" if settings.gemini_configured else "local"
    if operation == "ia-gen" and engine != "gemini":
        engine = "gemini"
    if engine == "gemini" and not settings.gemini_configured:
        raise ApiError(503, "provider_unavailable",
                       f"No generative provider is configured, so {operation} with engine gemini is unavailable.",
                       retry_after=3600)
    return engine


@bp.post("/generate")
@require_user
def generate():
    """Validate, store and queue a job; answer at once with its id."""
    ctx = _ctx()
    plan = ctx.settings.plans.of(g.principal.plan)  # only the verified credential names it (api/plans.py)
    ctx.limiter.hit(g.principal.user_id, plan.name)
    key = idempotency.check_key(request.headers.get("Idempotency-Key"))
    submission = parse(request, ctx.settings.max_pixels, ctx.settings.max_upload_bytes)
    operation = submission.fields.operation
    params = submission.params
    params["engine"] = _engine_for(operation, submission.fields.engine)
    if submission.fields.format == "svg" and operation != "stencil":
        raise bad_request("format svg is only for stencil jobs.")
    keep_for = submission.fields.retentionS
    if keep_for is not None and keep_for > ctx.settings.result_ttl_s:
        raise bad_request(f"`retentionS` must be 60-{ctx.settings.result_ttl_s} (RESULT_TTL_S).")
    if submission.fields.webhookUrl:
        try:
            webhooks.check_url(submission.fields.webhookUrl, ctx.settings.webhook_allow_private)
        except webhooks.WebhookRefused as exc:
            raise bad_request(str(exc)) from None
    user_id = g.principal.user_id
    job_id = new_job_id()
    answer = {"jobId": job_id, "queue": QUEUES[operation].name, "operation": operation,
              "status": "waiting", "statusUrl": f"/status/{job_id}"}
    confirm = None
    if key is not None:
        fingerprint = submission.fingerprint()
        earlier = idempotency.claim(ctx.redis, user_id, key, fingerprint, answer)
        if earlier is not None:
            return jsonify(_placed(earlier, user_id)), 200, {"Location": earlier["statusUrl"]}
        confirm = partial(idempotency.confirm, user_id, key, fingerprint, answer)
    upload = None  # judged after the Idempotency-Key: a retry gets its original job, not "already used"
    try:
        upload = uploads.take(ctx, user_id, submission.fields.upload, job_id, ctx.store.input_ttl_s(operation))
        ctx.admission.admit(user_id, operation, job_id, plan)
        job = ctx.store.enqueue(job_id, user_id, operation, params, submission.image,
                                submission.mime_type or (upload and upload.mime_type), request.environ.get(ENVIRON_ID),
                                input_stored=upload is not None, also=confirm, weight=plan.weight,
                                max_wait_s=submission.fields.maxWaitS,
                                idempotency=keys.idempotency_key(user_id, key) if key is not None else None)
    except Exception:
        uploads.release(ctx, upload, job_id)
        ctx.admission.release(user_id, job_id)
        if key is not None:
            idempotency.release(ctx.redis, user_id, key)
        raise
    uploads.used(ctx, upload)
    ctx.metrics.submitted(operation)
    log.info("job queued", extra={"jobId": job_id, "queue": answer["queue"]})
    place = job.place
    answer = {**answer, "queuePosition": place.position if place else None,
              "etaS": place.eta_s(answer["queue"], active=False) if place else None}
    return jsonify(answer), 202, {"Location": answer["statusUrl"]}


def _placed(answer: dict, user_id: str) -> dict:
    """A repeated submission's original answer, with the job's place now (as `GET /status` gives it)."""
    view = _ctx().store.view(answer["jobId"], user_id)
    body = describe(view) if view is not None else {}
    return {**answer, "queuePosition": body.get("queuePosition"), "etaS": body.get("etaS")}


@bp.get("/status/<job_id>")
@require_user
@limit_reads
def status(job_id: str):
    """The job's status object; `?queue=` is accepted and ignored. A job waiting past its start deadline is
    ended first (`tasks/core/deadlines.py`)."""
    ctx = _ctx()
    view = ctx.store.past_deadline(ctx.store.view(job_id, g.principal.user_id), ctx.settings.webhook_retry_s)
    if view is None:
        raise not_found()
    body = describe(view, _url_maker())
    if view.charged:  # ended but not yet settled (normally the worker settles)
        _ctx().admission.settle(view.id, view.user, body["status"])
    return jsonify(body)


@bp.get("/status/<job_id>/events")
@require_user
@limit_reads
def events(job_id: str):
    """A text/event-stream of status objects as they change, ending after the terminal one
    (`events.open_stream`)."""
    opened = open_stream(_ctx(), job_id, g.principal.user_id, _url_maker())
    if opened is None:
        raise not_found()
    body, on_close = opened
    response = Response(body, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    for callback in on_close:
        response.call_on_close(callback)
    return response


def _png(job) -> Response:
    value = job.return_value() or {}
    stored = _ctx().links.stored(job.id, value)
    if stored:
        return redirect(stored, 302)
    data = _ctx().blobs.open(value.get("outputKey", "")) if value else None
    if data is None:
        raise not_found("The result has expired.")
    return Response(data, mimetype="image/png", headers={
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'inline; filename="inkq-{job.id}.png"'})


@bp.get("/result/<job_id>")
@require_user
@limit_reads
def result(job_id: str):
    """The output PNG for its owner (with the S3 store, a 302 to a fresh presigned URL); 404 until completed."""
    job = _owned(job_id)
    if word_of(job, refresh=True) != COMPLETED:
        raise not_found("The job has no result yet.")
    return _png(job)


@bp.get("/files/<token>")
def file(token: str):
    """The output PNG (or SVG) behind a signed, expiring URL (no Authorization needed)."""
    signed = _ctx().links.verify(token) or ""
    job_id = signed.removesuffix(SVG_SUFFIX)
    job = _ctx().store.fetch_any(job_id) if job_id else None
    if job is None or word_of(job, refresh=True) != COMPLETED:
        raise not_found("This result link is invalid or has expired.")
    return _svg(job) if signed.endswith(SVG_SUFFIX) else _png(job)


@bp.after_request
def _files_for_any_origin(response: Response) -> Response:
    """A signed result link is its own credential, as a presigned S3 URL is: any page holding one may read
    it from script (fetch it, draw it on a canvas), as fal's and Replicate's file URLs allow. No cookie
    or header authenticates these requests, so `*` gives no origin more than the link itself does.
    `Cross-Origin-Resource-Policy` lets cross-origin-isolated pages (COEP) embed it. Error answers carry
    the header too, so a page can read why a link failed (expired)."""
    if request.endpoint == "jobs.file":
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


def _svg(job) -> Response:
    """The stencil's SVG: our tracer's paths only, served so that no script in it could ever run."""
    value = job.return_value() or {}
    stored = _ctx().links.stored(job.id + SVG_SUFFIX, value) if value.get("svgKey") else None
    if stored:
        return redirect(stored, 302)
    data = _ctx().blobs.open(value.get("svgKey", "")) if value.get("svgKey") else None
    if data is None:
        raise not_found("The job has no SVG, or it has expired.")
    return Response(data, mimetype="image/svg+xml", headers={
        "Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        "Content-Disposition": f'inline; filename="inkq-{job.id}.svg"'})


@bp.get("/jobs")
@require_user
@limit_reads
def list_jobs():
    """The caller's jobs, newest first."""
    unknown = set(request.args) - {"limit", "status"}
    if unknown:
        raise bad_request(f"Unknown query parameter `{sorted(unknown)[0]}`.")
    try:
        query = JobsQuery.model_validate(request.args.to_dict())
    except ValueError:
        raise bad_request("`limit` must be 1-100 and `status` one of waiting, active, completed, failed, canceled.")
    store, retry_s = _ctx().store, _ctx().settings.webhook_retry_s
    views = [store.past_deadline(view, retry_s) or view
             for view in store.list(g.principal.user_id, query.limit, query.status)]
    views = [view for view in views if query.status is None or view.word == query.status]  # ended just now
    result_url = _url_maker()
    bodies = [describe(view, result_url) for view in views]
    for view, body in zip(views, bodies):
        if view.charged:
            _ctx().admission.settle(view.id, view.user, body["status"])
    return jsonify({"jobs": bodies})


@bp.delete("/jobs/<job_id>/data")
@require_user
@limit_reads
def erase(job_id: str):
    """Erase a job now: canceled first if it has not ended, then its record, input, outputs, idempotency entry,
    listing entry and leases deleted; every job endpoint answers 404 for it afterwards."""
    job = _owned(job_id)
    objects = _ctx().store.erase(job, "api", webhook_retry_s=_ctx().settings.webhook_retry_s)
    _ctx().hub.changed(job_id)  # this process's cached status goes now (the others' with the announcement)
    log.info("job erased by its owner (%d image objects)", objects, extra={"jobId": job_id})
    return "", 204


@bp.delete("/jobs/<job_id>")
@require_user
@limit_reads
def cancel(job_id: str):
    """Cancel: a waiting job never runs, an active one is stopped; 409 once it has ended."""
    job = _owned(job_id)
    how = _ctx().store.cancel(job, webhook_retry_s=_ctx().settings.webhook_retry_s)  # ended there, or by its worker when running
    if how is None:
        raise ApiError(409, "conflict", f"The job has already ended ({word_of(job, refresh=True)}).")
    log.info("job canceled (%s)", how, extra={"jobId": job.id, "queue": job.origin})
    return jsonify({"jobId": job.id, "status": "canceled"})
