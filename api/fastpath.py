"""The hot read, `GET /status/<jobId>`, served just below the trusted proxies' layer instead of through Flask.

At the seed's scale (5,000 users polling every 2 s) this one route is most of the API's traffic, and
Flask's per-request work (contexts, routing, hooks, response objects) cost more than the read itself.
Only the happy path is served here: an authenticated user, a well-formed id, a job the user owns.
A job's view may come from the process's cache, which announcements keep exact (`events.Hub`):
a job waiting in a long queue is polled many times and read from Redis once.
Everything else (no or bad credentials, admin tokens, unknown or foreign jobs, Redis errors) falls
through to the Flask view (`jobs.status`), which answers it and every error exactly as before. Both
paths build the body with the same `status.read` and `status.describe`; a test checks they agree.

`GET /status/<jobId>/events` is opened here too, for the same reason (2,000 streams opened
at once queued for Flask's per-request work): the owner's request is authenticated, then counted against
READ_RATE_LIMIT and opened with `leases.open_on` in one round trip (two scripts pipelined: the limiter's,
then ownership, MAX_STREAMS_PER_USER and the first event's read), the body being the Flask view's own `events.stream`. A refused
request (over the read limit or the stream cap, an unknown or foreign job, Redis errors, admins)
falls through to the Flask view, which answers it as before; a request already counted here is
marked (`limits.COUNTED`) so the view does not count it twice.
"""
from __future__ import annotations

import json
import logging
import time

from tasks.core import deadlines

from .access import identify
from .events import open_stream
from .forwarding import origin
from .limits import COUNTED, OverLimit
from .status import WAITING, describe, read
from .store import valid_job_id

log = logging.getLogger("inkq.api")

_PREFIX = "/status/"
ENDPOINT = "jobs.status"  # the Flask endpoint this path stands in for, in metrics
_EVENTS = "/events"
EVENTS_ENDPOINT = "jobs.events"
_EVENTS_HEADERS = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no")]  # as the Flask view's Response has them


class FastStatus:
    """WSGI middleware: answer owned `GET /status/<id>` directly, pass everything else on."""

    def __init__(self, wsgi_app, ctx):
        self.wsgi_app = wsgi_app
        self.ctx = ctx

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "GET" and path.startswith(_PREFIX) and valid_job_id(path[len(_PREFIX):]):
            started = time.perf_counter()
            body = self._answer(environ, path[len(_PREFIX):])
            if body is not None:
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
                metrics = self.ctx.metrics
                metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - started)
                metrics.requests.labels("GET", ENDPOINT, "200").inc()
                return [body]
        elif (environ.get("REQUEST_METHOD") == "GET" and path.startswith(_PREFIX) and path.endswith(_EVENTS)
              and valid_job_id(path[len(_PREFIX):-len(_EVENTS)])):
            started = time.perf_counter()
            events = self._events(environ, path[len(_PREFIX):-len(_EVENTS)])
            if events is not None:
                start_response("200 OK", list(_EVENTS_HEADERS))
                metrics = self.ctx.metrics
                metrics.latency.labels(EVENTS_ENDPOINT).observe(time.perf_counter() - started)
                metrics.requests.labels("GET", EVENTS_ENDPOINT, "200").inc()
                return events
        return self.wsgi_app(environ, start_response)

    def _events(self, environ, job_id: str):
        """The owner's event stream, opened; None to let the Flask view answer."""
        ctx = self.ctx
        try:
            who = ctx.auth.authenticate(environ.get("HTTP_AUTHORIZATION"))
        except Exception:  # noqa: BLE001 - the Flask view answers 401/503
            return None
        if who.is_admin or who.user_id.startswith("@"):
            return None
        identify(environ, who.user_id)
        public = ctx.settings.public_url
        try:
            opened = open_stream(ctx, job_id, who.user_id, lambda name, value=None: ctx.links.url(origin(environ, public), name, value),
                                 limiter=ctx.read_limiter)
        except OverLimit:  # the view counts it again and answers the 429 (a refusal counts nothing)
            return None
        except Exception:  # noqa: BLE001 - 429 (stream cap) or Redis errors: the view answers, not counting again
            log.debug("event stream fast path fell through", exc_info=True)
            opened = None
        environ[COUNTED] = True
        if opened is None:
            return None
        body, on_close = opened
        return _EventBody(body, *on_close)


    def _answer(self, environ, job_id: str) -> bytes | None:
        ctx = self.ctx
        try:
            who = ctx.auth.authenticate(environ.get("HTTP_AUTHORIZATION"))
            if who.is_admin or who.user_id.startswith("@"):
                return None
            identify(environ, who.user_id)
            hub, max_age = ctx.hub, ctx.settings.status_cache_s
            view = hub.cached(job_id, max_age)
            if view is None:
                mark = hub.mark()
                view = read(ctx.redis, job_id)
                if view is not None:
                    hub.remember(job_id, view, mark)
                    if view.charged and view.user == who.user_id:
                        ctx.admission.settle(view.id, view.user, view.word)
            if view is None or view.user != who.user_id:
                return None
            if view.word == WAITING and deadlines.is_due(view.meta):  # the owner's read ends it at its deadline
                view = ctx.store.past_deadline(view, ctx.settings.webhook_retry_s)
                if view is None:
                    return None
            public = ctx.settings.public_url  # the origin is built only for a completed job's URLs
            body = describe(view, lambda name, value=None: ctx.links.url(origin(environ, public), name, value))
        except Exception:  # noqa: BLE001 - the Flask view answers, with the contract's error if any
            log.debug("status fast path fell through", exc_info=True)
            return None
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


class _EventBody:
    """The stream's chunks as bytes; closing it ends the stream, gives the lease back and stops watching
    (also when it never started)."""

    def __init__(self, chunks, *on_close):
        self._chunks = chunks
        self._on_close = on_close

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._chunks).encode()

    def close(self) -> None:
        try:
            self._chunks.close()
        finally:
            for callback in self._on_close:
                try:
                    callback()
                except Exception:  # noqa: BLE001 - every callback runs
                    log.warning("closing an event stream failed", exc_info=True)
