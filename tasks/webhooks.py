"""Webhooks per Standard Webhooks v1: when a job ends, its final status object is POSTed to the
`webhookUrl` given at submission, signed, and retried until it is delivered.

Headers: `webhook-id` (one per event, `<jobId>.<status>`, the same on every retry so receivers can
drop duplicates), `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed with the bytes of WEBHOOK_SECRET's
`whsec_<base64>`; a secret without the prefix is used as UTF-8 bytes). A receiver verifies them with
any Standard Webhooks library (`standardwebhooks` on PyPI, Svix's, ...).

Delivery is durable: the job's end (`tasks/ending.py`, in the transaction that ends the job, so once
per job whoever ends it) only schedules it, as an rq job on the `webhooks` queue, which the worker service runs
with its own pool (CONCURRENCY_WEBHOOKS). Timeouts, connection errors, 429 and 5xx are retried by
rq's scheduler with exponential backoff (WEBHOOK_RETRY_S, default 5, 20, 60, 180 and 420 s: six
attempts over about 11 minutes), across restarts and crashes like any job. Other 4xx answers are
final. The source job's status object shows the delivery (`webhook`: state, attempts, last answer).
A webhook never fails the job it reports.

Where a webhook may go (unless WEBHOOK_ALLOW_PRIVATE is true, for development and private networks):
- http or https, a host, no credentials, and port 80, 443 or 1024-65535 without `INTERNAL_PORTS`
  (databases, caches, container and cluster APIs): a receiver on a privileged port other than HTTP's
  own, or on a well-known internal service's port, is refused.
- Only global unicast addresses. An IPv6 address that carries an IPv4 address (IPv4-mapped
  `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo
  `2001::/32`) is judged by the IPv4 address it carries; the local-use NAT64 prefix
  `64:ff9b:1::/48` and site-local `fec0::/10` are refused. (Python 3.11's `ipaddress.is_global`
  calls `::127.0.0.1`, `64:ff9b::7f00:1` and `2002:7f00:1::` global.)

The submission is checked without any network lookup (`check_url`): syntax, scheme, port, and a literal
address (legacy IPv4 forms such as `127.1` or `2130706433` included) or a name that can only be local
(`localhost`, `*.localhost`, a name without a dot). A name is resolved only when an attempt is made,
so a slow resolver never holds an API request. Each attempt (`send`) resolves the name once, with a
deadline, refuses it if any address it resolves to is not allowed, and connects to the address it
checked: `PinnedAdapter` gives requests a connection pool for that IP, with the name as `Host` header,
TLS server name and certificate name. Nothing resolves the name a second time, so a resolver that
answers a public address to the check and a private one to the connection (DNS rebinding) gets
nothing. Proxies from the environment are not used for the same reason.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from .core import blobs, links, logs
from .core.changes import save_meta_and_announce
from .core.settings import WorkerSettings, current

log = logging.getLogger("inkq.webhooks")
TIMEOUT_S = 10
QUEUE = "webhooks"
SECRET_PREFIX = "whsec_"
RETRYABLE_STATUS = {408, 425, 429}
CONNECT_TIMEOUT_S = 5
RESOLVE_TIMEOUT_S = 5
MAX_ADDRESSES = 3  # addresses of one name tried in turn when a connection cannot be made
HTTP_PORTS = {80, 443}
INTERNAL_PORTS = frozenset({2375, 2376, 2379, 2380, 3306, 5432, 5984, 6379, 6443, 8500, 9200, 9300, 10250,
                            11211, 27017})
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class WebhookRetry(Exception):
    """This attempt failed in a way another attempt may fix; rq schedules the next one."""


class WebhookRefused(ValueError):
    """The URL may not be called."""


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart: where to connect and what to call the host."""

    scheme: str
    host: str
    port: int
    path: str
    literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @property
    def host_header(self) -> str:
        """The `Host` header: the name (an IPv6 literal in brackets), with the port unless it is the scheme's."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def target(url: str) -> Target:
    """Parse a webhookUrl; WebhookRefused when it is no http(s) URL with a host, or carries credentials."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except (ValueError, TypeError):  # `http://[::1`, `http://[notip]/`, a port that is no number
        raise WebhookRefused("webhookUrl is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookRefused("webhookUrl must be an http or https URL with a host.")
    if parts.username or parts.password:
        raise WebhookRefused("webhookUrl must not carry credentials.")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path, _literal(host))


def _literal(host: str):
    """The address a host names without any lookup (legacy IPv4 forms included), else None."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # `127.1`, `0x7f.1`, `2130706433`
    except OSError:
        return None


def embedded_ipv4(address) -> list:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if address.version != 6:
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in NAT64 or address in IPV4_COMPATIBLE:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    return []


def address_allowed(address) -> bool:
    """A global unicast address; one carrying an IPv4 address is judged by that address."""
    if address.version == 6:
        if address in NAT64_LOCAL or address.is_site_local or address.is_multicast:
            return False
        carried = embedded_ipv4(address)
        if carried:
            return all(address_allowed(inner) for inner in carried)
    return address.is_global and not address.is_multicast


def _check_port(port: int) -> None:
    if port not in HTTP_PORTS and (port < 1024 or port in INTERNAL_PORTS):
        raise WebhookRefused("webhookUrl's port must be 80, 443 or 1024-65535 (internal service ports refused).")


def check_url(url: str, allow_private: bool) -> Target:
    """The checks made at submission, without any network lookup; WebhookRefused names the problem."""
    where = target(url)
    if allow_private:
        return where
    _check_port(where.port)
    if where.literal is not None:
        if not address_allowed(where.literal):
            raise WebhookRefused("webhookUrl names a private or reserved address.")
    elif where.host == "localhost" or where.host.endswith(".localhost") or "." not in where.host.strip("."):
        raise WebhookRefused("webhookUrl names a local host.")
    return where


def resolve(where: Target, allow_private: bool, timeout_s: float = RESOLVE_TIMEOUT_S) -> list[str]:
    """The addresses to connect to, each checked, from one lookup bounded by timeout_s.

    WebhookRefused when any of them is not allowed; WebhookRetry when the name does not resolve in time."""
    if where.literal is not None:
        addresses = [where.literal]
    else:
        pool = ThreadPoolExecutor(max_workers=1)
        lookup = pool.submit(socket.getaddrinfo, where.host, where.port, proto=socket.IPPROTO_TCP)
        pool.shutdown(wait=False)
        try:
            infos = lookup.result(timeout=timeout_s)
        except FutureTimeout:
            raise WebhookRetry("name resolution timed out") from None
        except (OSError, UnicodeError, ValueError):
            raise WebhookRetry("name resolution failed") from None
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not allow_private and not all(address_allowed(address) for address in addresses):
        raise WebhookRefused("webhookUrl resolves to a private or reserved address.")
    return [str(address) for address in addresses[:MAX_ADDRESSES]]


class PinnedAdapter(HTTPAdapter):
    """requests' adapter, connecting to one given IP whatever the URL's host resolves to.

    The URL keeps its name, so the `Host` header (set by `post`), the TLS server name (SNI) and the
    certificate check are the name's; only the pool's address is the IP (urllib3's `server_hostname`
    and `assert_hostname`, part of its pool key)."""

    def __init__(self, address: str):
        self.address = address
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(self, request, verify, cert=None):
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = host_params["host"]
            pool_kwargs["assert_hostname"] = host_params["host"]
        host_params["host"] = self.address
        return host_params, pool_kwargs


def post(where: Target, url: str, address: str, body: bytes, headers: dict) -> requests.Response:
    """POST to url, connected to `address` (checked), never following redirects or env proxies."""
    with requests.Session() as session:
        session.trust_env = False
        adapter = PinnedAdapter(address)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session.post(url, data=body, headers={**headers, "Host": where.host_header},
                            timeout=(CONNECT_TIMEOUT_S, TIMEOUT_S), allow_redirects=False)


def deliver(where: Target, url: str, addresses: list[str], body: bytes, headers: dict) -> requests.Response:
    """POST to the first address that accepts a connection (nothing was sent to the ones before)."""
    for address in addresses[:-1]:
        try:
            return post(where, url, address, body, headers)
        except (requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError) as exc:
            if not _not_connected(exc):
                raise
    return post(where, url, addresses[-1], body, headers)


def _not_connected(exc: Exception) -> bool:
    """The request failed before a connection existed, so it may go to another address."""
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    return isinstance(getattr(reason, "reason", reason), (NewConnectionError, ConnectTimeoutError))


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


def payload(job, status: str, settings: WorkerSettings | None = None) -> dict:
    """The job's final status object, as GET /status gives it. `result.image` (and `svg`) are signed links
    made at each attempt, valid for RESULT_URL_TTL_S: with the S3 store presigned URLs of the objects; with
    Redis the API's `/files/<token>` links under PUBLIC_URL, when the worker service has SECRET_KEY and
    PUBLIC_URL (`tasks.core.links`), else the path of `GET /result/<jobId>`, which needs the owner's token.
    `settings`: the worker service's (this process's by default)."""
    settings = settings or current()
    meta = job.meta
    result = None
    if status == "completed":
        value = job.return_value() or {}
        result = {k: v for k, v in value.items() if k not in ("outputKey", "svgKey")} if isinstance(value, dict) else {}
        store, ttl_s = blobs.store(job.connection), settings.result_url_ttl_s
        has_svg = isinstance(value, dict) and bool(value.get("svgKey"))
        if store.kind == "s3":
            result["image"] = blobs.result_url(store, job.id, False, ttl_s, value)
            if has_svg:
                result["svg"] = blobs.result_url(store, job.id, True, ttl_s, value)
        elif (keys := signing(settings)) is not None:
            secret_key, origin = keys
            result["image"] = links.signed_url(secret_key, origin, job.id)
            if has_svg:
                result["svg"] = links.signed_url(secret_key, origin, job.id + links.SVG_SUFFIX)
        else:
            result["image"] = f"/result/{job.id}"
    return {"jobId": job.id, "queue": job.origin, "operation": meta.get("operation"), "status": status,
            "progress": 100 if status == "completed" else int(meta.get("progress", 0)),
            "stage": meta.get("stage") or status, "result": result,
            "error": meta.get("error") if status != "completed" else None,
            "attempts": int(meta.get("attempts", 0)), "createdAt": _iso(job.created_at),
            "startedAt": meta.get("startedAt"), "endedAt": _iso(job.ended_at) or meta.get("canceledAt"),
            "queuePosition": None, "etaS": None, "statusUrl": f"/status/{job.id}"}


def signing(settings: WorkerSettings) -> tuple[str, str] | None:
    """(SECRET_KEY, PUBLIC_URL) when the worker service can sign the API's result links, else None.
    `tasks.runtime.cli` refuses to start with a PUBLIC_URL that is not an origin."""
    origin = links.checked_origin(settings.public_url)
    return (settings.secret_key, origin) if settings.secret_key and origin else None


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery_id(job_id: str) -> str:
    """The rq job id of the delivery of a job's final status (one per job: its end is fenced), so that erasing
    the job finds it (`tasks/erasure.py`)."""
    return f"webhook-{job_id}"


def schedule(job, status: str, pipeline, retry_s: tuple | None = None) -> bool:
    """Add to `pipeline` (the job's end transaction, `tasks/ending.py`) the queueing of the delivery of this
    job's final status and its `pending` state; False when it has no webhook. The end is fenced, so it
    runs once per job: no guard of its own.

    Retried after the waits `retry_s` (WEBHOOK_RETRY_S: the API passes its settings'; by default the worker
    service's, `tasks.core.settings.current`)."""
    if not webhook_url(job):
        return False
    from rq import Queue, Retry
    from rq.serializers import JSONSerializer

    msg_id = event_id(job.id, status)
    intervals = list(current().webhook_retry_s if retry_s is None else retry_s)
    # recorded in the same transaction, before the delivery is queued: a delivery worker can only
    # overwrite it with a later state
    job.meta["webhook"] = {"state": "pending", "attempts": 0, "eventId": msg_id}
    pipeline.hset(job.key, "meta", job._serialize_meta())
    Queue(QUEUE, connection=job.connection, serializer=JSONSerializer).enqueue(
        "tasks.webhooks.send", job.id, status, msg_id, job_id=delivery_id(job.id), job_timeout=TIMEOUT_S * 3,
        result_ttl=3600,
        failure_ttl=86400, retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
        description=f"webhook {msg_id}", meta={"source": job.id, "retries": len(intervals)}, pipeline=pipeline)
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
    # counted by the delivery job itself (rq takes one off `retries_left` before each retry), not read
    # back from the source job's meta, which another writer's stale copy can set back
    retries = me.meta.get("retries")
    if isinstance(retries, int):
        attempt = retries - int(me.retries_left or 0) + 1
    else:  # queued by a version before this one
        attempt = int((job.meta.get("webhook") or {}).get("attempts", 0)) + 1
    last = not me.retries_left
    where = {"jobId": job_id, "queue": job.origin, "delivery": attempt}
    settings = current()
    allow_private = settings.webhook_allow_private
    try:
        destination = check_url(url, allow_private)
        addresses = resolve(destination, allow_private)
    except WebhookRefused as exc:
        log.warning("webhook for job %s not sent: %s", job_id, exc, extra=where)
        return _record(connection, job_id, {"state": "failed", "attempts": attempt, "eventId": msg_id,
                                            "lastError": str(exc)})
    except WebhookRetry as exc:
        addresses, unresolved = [], str(exc)
    else:
        unresolved = None
    body = json.dumps(payload(job, status, settings), separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {"Content-Type": "application/json", "User-Agent": "inkq-webhooks", "webhook-id": msg_id,
               "webhook-timestamp": str(timestamp)}
    if settings.webhook_secret:
        headers["webhook-signature"] = sign(settings.webhook_secret, msg_id, timestamp, body)
    started = time.perf_counter()
    answer, error = None, unresolved
    if addresses:
        try:
            answer = deliver(destination, url, addresses, body, headers).status_code
        except requests.RequestException as exc:
            error = exc.__class__.__name__
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
        save_meta_and_announce(job)
    except NoSuchJobError:
        pass
    return state
