"""Webhooks per Standard Webhooks v1: when a job ends, its final status object is POSTed to the
`webhookUrl` given at submission, signed, and retried until it is delivered.

Headers: `webhook-id` (one per event, `<jobId>.<status>`, the same on every retry so receivers can
drop duplicates), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the bytes of WEBHOOK_SECRET's
`whsec_<base64>`; a secret without the prefix is used as UTF-8 bytes). A receiver verifies them with
any Standard Webhooks library (`standardwebhooks` on PyPI, Svix's, ...).

Delivery is durable: the job's end (callbacks, the recovery sweep, the API's cancel) only schedules
it, once per event (`SET NX`), as an rq job on the `webhooks` queue, which the worker service runs
with its own pool (CONCURRENCY_WEBHOOKS). Timeouts, connection errors, 429 and 5xx are retried by
rq's scheduler with exponential backoff (WEBHOOK_RETRY_S, default 5, 20, 60, 180 and 420 s: six
attempts over about 11 minutes), across restarts and crashes like any job. Other 4xx answers are
final. The address is checked again at every attempt: private, loopback, link-local or reserved
ranges are refused unless WEBHOOK_ALLOW_PRIVATE is true (against DNS rebinding). The source job's
status object shows the delivery (`webhook`: state, attempts, last answer). A webhook never fails
the job it reports.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from urllib.parse import urlsplit

import requests

from . import blobs, logs
from .changes import announce
from .settings import env_bool, env_int

log = logging.getLogger("inkq.webhooks")
TIMEOUT_S = 10
QUEUE = "webhooks"
DEFAULT_RETRY_S = "5,20,60,180,420"
SECRET_PREFIX = "whsec_"
SCHEDULED_TTL_S = 7 * 86400
RETRYABLE_STATUS = {408, 425, 429}


class WebhookRetry(Exception):
    """This attempt failed in a way another attempt may fix; rq schedules the next one."""


class WebhookRefused(ValueError):
    """The URL may not be called."""


def check_url(url: str, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or that resolve to a private address (unless allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhookUrl must be an http or https URL with a host.")
    if parts.username or parts.password:
        raise WebhookRefused("webhookUrl must not carry credentials.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        raise WebhookRefused("webhookUrl's host does not resolve.") from None
    if allow_private:
        return
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise WebhookRefused("webhookUrl resolves to a private or reserved address.")


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64 bytes after `whsec_`, else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX):])
    return secret.encode()


def event_id(job_id: str, status: str) -> str:
    """The event's id, stable across retries: one final event per job."""
    return f"{job_id}.{status}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one attempt."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def webhook_url(job) -> str | None:
    """The job's webhookUrl, if it was given one."""
    return (job.args[0].get("params", {}) if job.args and isinstance(job.args[0], dict) else {}).get("webhookUrl")


def payload(job, status: str) -> dict:
    """The job's final status object, as GET /status gives it. With the S3 store `result.image` (and
    `svg`) are presigned URLs made at each attempt; with Redis, `result.image` is the path of
    `GET /result/<jobId>`, which needs the owner's token (a worker cannot sign the API's links)."""
    meta = job.meta
    result = None
    if status == "completed":
        value = job.return_value() or {}
        result = {k: v for k, v in value.items() if k not in ("outputKey", "svgKey")} if isinstance(value, dict) else {}
        store, ttl_s = blobs.store(job.connection), env_int(os.environ, "RESULT_URL_TTL_S", 3600)
        result["image"] = blobs.result_url(store, job.id, False, ttl_s) or f"/result/{job.id}"
        if isinstance(value, dict) and value.get("svgKey") and store.kind == "s3":
            result["svg"] = blobs.result_url(store, job.id, True, ttl_s)
    return {"jobId": job.id, "queue": job.origin, "operation": meta.get("operation"), "status": status,
            "progress": 100 if status == "completed" else int(meta.get("progress", 0)),
            "stage": meta.get("stage") or status, "result": result,
            "error": meta.get("error") if status != "completed" else None,
            "attempts": int(meta.get("attempts", 0)), "createdAt": _iso(job.created_at),
            "startedAt": meta.get("startedAt"), "endedAt": _iso(job.ended_at) or meta.get("canceledAt"),
            "statusUrl": f"/status/{job.id}"}


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def retry_intervals(env=None) -> list[int]:
    """WEBHOOK_RETRY_S: the waits before each retry, in seconds."""
    raw = (env if env is not None else os.environ).get("WEBHOOK_RETRY_S") or DEFAULT_RETRY_S
    return [max(0, int(float(part))) for part in raw.split(",") if part.strip()]


def schedule(job, status: str, connection=None, env=None) -> bool:
    """Queue the delivery of this job's final status, once per event; False when it has no webhook."""
    if not webhook_url(job):
        return False
    from rq import Queue, Retry
    from rq.serializers import JSONSerializer

    connection = connection or job.connection
    msg_id = event_id(job.id, status)
    if not connection.set(f"inkq:webhook:{msg_id}", 1, nx=True, ex=SCHEDULED_TTL_S):
        return False  # already scheduled (the callback and the sweep both saw the end)
    intervals = retry_intervals(env)
    Queue(QUEUE, connection=connection, serializer=JSONSerializer).enqueue(
        "tasks.webhooks.send", job.id, status, msg_id, job_timeout=TIMEOUT_S * 3, result_ttl=3600,
        failure_ttl=86400, retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
        description=f"webhook {msg_id}", meta={"source": job.id})
    state = _record(connection, job.id, {"state": "pending", "attempts": 0, "eventId": msg_id})
    job.meta["webhook"] = state  # so that a later save of this copy of the job keeps it
    return True


def send(job_id: str, status: str, msg_id: str) -> dict:
    """One delivery attempt, run as an rq job on the `webhooks` queue."""
    from rq import get_current_job
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    me = get_current_job()
    connection = me.connection
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return {"state": "dropped", "reason": "the job expired"}
    # this attempt's lines are about the source job: its id, owner and submitting request
    logs.bind(jobId=job_id, queue=job.origin, userId=job.meta.get("user"), requestId=job.meta.get("requestId"))
    url = webhook_url(job)
    attempt = int((job.meta.get("webhook") or {}).get("attempts", 0)) + 1
    last = not me.retries_left
    where = {"jobId": job_id, "queue": job.origin, "delivery": attempt}
    try:
        check_url(url, env_bool(os.environ, "WEBHOOK_ALLOW_PRIVATE", False))
    except WebhookRefused as exc:
        log.warning("webhook for job %s not sent: %s", job_id, exc, extra=where)
        return _record(connection, job_id, {"state": "failed", "attempts": attempt, "eventId": msg_id,
                                            "lastError": str(exc)})
    body = json.dumps(payload(job, status), separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "inkq-webhooks", "webhook-id": msg_id,
               "webhook-timestamp": str(timestamp)}
    secret = os.environ.get("WEBHOOK_SECRET")
    if secret:
        headers["webhook-signature"] = sign(secret, msg_id, timestamp, body)
    started = time.perf_counter()
    try:
        response = requests.post(url, data=body, headers=headers, timeout=TIMEOUT_S, allow_redirects=False)
        answer, error = response.status_code, None
    except requests.RequestException as exc:
        answer, error = None, exc.__class__.__name__
    where["durationMs"] = round((time.perf_counter() - started) * 1000, 1)
    state = {"attempts": attempt, "eventId": msg_id, "lastResponse": answer, "lastError": error}
    if answer is not None and answer < 300:
        log.info("webhook for job %s delivered (%s)", job_id, answer, extra=where)
        return _record(connection, job_id, {**state, "state": "delivered"})
    retryable = answer is None or answer >= 500 or answer in RETRYABLE_STATUS
    if not retryable or last:
        log.warning("webhook for job %s failed for good: %s", job_id, answer or error, extra=where)
        return _record(connection, job_id, {**state, "state": "failed"})
    log.warning("webhook for job %s failed (%s); will retry", job_id, answer or error, extra=where)
    _record(connection, job_id, {**state, "state": "retrying"})
    raise WebhookRetry(f"webhook answered {answer or error}")


def _record(connection, job_id: str, state: dict) -> dict:
    """Write the delivery state into the source job's meta and announce the change."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    state = {k: v for k, v in state.items() if v is not None}
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        job.get_meta(refresh=True)
        job.meta["webhook"] = state
        job.save_meta()
        announce(connection, job_id)
    except NoSuchJobError:
        pass
    return state
