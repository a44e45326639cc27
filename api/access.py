"""Request ids and access lines, as the outermost WSGI layer, so that every response has them:
Flask's, the status fast path's (`api/fastpath.py`), rq-dashboard's and every error.

`X-Request-ID` from the client is kept when it is 1-128 characters of `A-Za-z0-9._:-` (API.md),
otherwise a new one is made; it is echoed on the response, bound to the request's log lines
(`tasks.core.logs.bind`), left in `environ["inkq.request_id"]` for the submit view to store on the job,
and written on the access line. The access line is logged when the response body is closed, so a
stream's line gives the stream's whole length. It names the method, the path without its query
(signed URLs' tokens cut), the status, the duration, the user (`environ["inkq.user"]`, set once
the caller is authenticated) and the request id.
"""
from __future__ import annotations

import logging
import re
import time
import uuid

from tasks.core import logs

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ENVIRON_ID = "inkq.request_id"
ENVIRON_USER = "inkq.user"
_SECRET_PATH = re.compile(r"^(/files/)[^/]+")

access_log = logging.getLogger("inkq.access")


def request_id(given: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if given and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def loggable_path(path: str) -> str:
    """The path as it may be logged: a signed download's token is cut."""
    return _SECRET_PATH.sub(r"\1…", path)


def identify(environ, user_id: str) -> None:
    """Record who the caller is, for this request's log lines and its access line."""
    environ[ENVIRON_USER] = user_id
    logs.bind(userId=user_id)


class RequestIds:
    """WSGI middleware: the request id on every response and log line, and one access line per request."""

    def __init__(self, wsgi_app, access: bool = True):
        self.wsgi_app = wsgi_app
        self.access = access

    def __call__(self, environ, start_response):
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        environ[ENVIRON_ID] = rid
        started = time.perf_counter()
        seen: list[str] = []

        def start(status, headers, exc_info=None):
            seen[:] = [status]
            headers = [(k, v) for k, v in headers if k.lower() != "x-request-id"]
            headers.append(("X-Request-ID", rid))
            return start_response(status, headers, exc_info)

        token = logs.bind(requestId=rid)
        try:
            body = self.wsgi_app(environ, start)
        except BaseException:
            self._line(environ, rid, "500", started)
            raise
        finally:
            logs.unbind(token)
        return _Closing(body, lambda: self._line(environ, rid, seen[0] if seen else "500", started))

    def _line(self, environ, rid: str, status: str, started: float) -> None:
        if not self.access:
            return
        method, path = environ.get("REQUEST_METHOD", ""), loggable_path(environ.get("PATH_INFO", ""))
        code = int(status.split(" ", 1)[0])
        fields = {"method": method, "path": path, "status": code, "durationMs": logs.since_ms(started),
                  "userId": environ.get(ENVIRON_USER), "requestId": rid}
        access_log.info("%s %s %d", method, path, code, extra={k: v for k, v in fields.items() if v is not None})


class _Closing:
    """A response body that calls `on_close` once, after the server closes it."""

    def __init__(self, body, on_close):
        self.body = body
        self.on_close = on_close

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()
