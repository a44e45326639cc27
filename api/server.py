"""The gunicorn worker the API runs (`api.server.Worker`): gunicorn's `gevent_pywsgi` worker with read
deadlines and connection shedding, so that slow or idle clients cannot use up the connection budget
(GUNICORN_WORKER_CONNECTIONS per process).

gunicorn 27.0.1 has no request-header timeout, and its `keepalive` and `timeout` settings do not
reach the `gevent_pywsgi` worker's connections: gevent 26.9's `pywsgi.WSGIHandler` reads a request
line, headers and body with no deadline at all, so a client sending one header line every 10 s kept
its connection, and its slot in the worker's pool, for as long as it liked. Here:

- **Header deadline.** From the moment a connection waits for a request (a new connection, or a
  kept-alive one between requests) its request line and headers must be complete within
  REQUEST_HEADER_TIMEOUT_S (default 10 s), or the connection is closed (with a 408 once a request
  line has arrived). An idle kept-alive connection is closed after the same time.
- **Body deadline.** The body must then arrive within REQUEST_BODY_TIMEOUT_S (default 60 s: a 14 MB
  body at about 2 Mbit/s). A read past it fails; the app answers 400 `invalid_request` (werkzeug
  takes a failed read as a client that went away) and the connection is closed.
  Both deadlines are enforced on the connection's reader (`_DeadlineReader`), which every read of
  gevent's handler goes through: the request line, the headers, the app's body reads and gevent's
  discarding of an unread body.
- **Shedding.** While fewer than a tenth of the pool's slots are free (checked as each connection
  arrives and every `SHED_EVERY_S`), every connection that has waited `SHED_AFTER_S` (1 s) or more
  for its headers is closed, idle kept-alive ones included. A burst of clients that connect and
  send their request at once is not shed; sockets that never finish their headers are, as fast as
  an attacker can open them, so the listen queue keeps moving and other clients get their turn. A crowd of sockets that never finish their headers therefore cannot keep
  others out, even one that opens new sockets as fast as they are closed; requests being served and
  open event streams are never shed (streams are capped per user instead, `api/leases.py`).

- **Turns.** A greenlet keeps the process until a read or write would block. A kept-alive client whose
  next request is already waiting (pipelined, or just fast: on a 2-core box the client and Redis
  answer on the other core before Python reaches its next read) was served request after request
  while the process's other connections, their Redis replies long arrived, waited: in a burst of
  32 kept-alive uploads, one connection served back to back at 2 ms a request while 15 others waited
  150-400 ms (submit p99 150-340 ms with wrk, 41-80 ms with the turn, at the same
  throughput). So each request after a connection's first starts with a turn of the event loop (a
  `gevent.sleep` of `TURN_S` > 0, which resumes only after the loop has polled; `sleep(0)` may
  resume before): every connection ready at that moment is served first. A new connection's first
  request has no turn: it was accepted in a turn of its own, and a turn there made 2,000 event
  streams opened at once wait for each other (first-event p50 0.5 -> 1.0 s).

- **Framing** (RFC 9112 §6.1, §6.3). gevent 26.9 read a request with both `Content-Length`
  and `Transfer-Encoding: chunked` as chunked and kept the connection open, so a second request
  hidden in the body, where a proxy that frames by `Content-Length` saw only body, was served on it.
  It also framed by `Content-Length` (or as bodiless) a request whose `Transfer-Encoding` was not
  exactly "chunked" (`gzip, chunked`, `chunked` twice, a trailing space), and took a header line it
  could not parse (`Transfer-Encoding : chunked`, a folded line) as the end of the headers. So the
  header section is read here (`read_fields`), line by line, each a `name: value` with CRLF; then a
  request is refused with 400 `invalid_request` and the connection closed when: a header line is
  malformed (whitespace before the colon, a folded line, a bare CR or LF, a control character); it
  has both `Content-Length` and `Transfer-Encoding`; its `Transfer-Encoding` is anything but one
  `chunked` (the only coding served) or comes on an HTTP/1.0 request; it has more than one
  `Content-Length`, or one that is not a plain decimal number; it has more than one `Host`, or none
  on HTTP/1.1. No request on a connection after such a message is read.

The hooks used are gevent's `WSGIHandler.read_requestline`, `read_request`, `MessageClass` and
`_handle_client_error` (the last documented by gevent as experimental, since 1.1b6).
"""
from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
from collections import OrderedDict

import gevent
from gevent.pywsgi import headers_factory
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from .access import request_id

log = logging.getLogger("inkq.api")

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0
SHED_SHARE = 10  # keep at least 1/SHED_SHARE of the pool free
SHED_AFTER_S = 1.0  # a connection is shed only after waiting this long for its headers
SHED_EVERY_S = 0.25
TURN_S = 1e-6  # a kept-alive connection's next request waits this long (one turn of the event loop) to be read
MAX_FIELDS = 100  # header lines per request (http.client's limit)
MAX_FIELD_LINE = 65536  # bytes per header line (http.client's limit)
FIELD_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n")  # RFC 9110 token, VCHAR/obs-text/SP/HTAB
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


class BadFraming(ValueError):
    """A request whose header section is malformed or whose length is not certain (module docstring)."""

    def __init__(self, message: str, given_id: str | None = None):
        super().__init__(message)
        self.given_id = given_id


def read_fields(rfile):
    """The header section of a request, read from `rfile` line by line and checked; gevent's headers object."""
    lines = []
    while True:
        line = rfile.readline(MAX_FIELD_LINE + 1)
        if line in (b"\r\n", b""):  # the end, or a client that went away (or was shed)
            break
        if len(lines) >= MAX_FIELDS:
            raise BadFraming(f"A request may have at most {MAX_FIELDS} header lines.")
        if not FIELD_LINE.fullmatch(line):
            raise BadFraming("A header line is malformed: each must be 'Name: value' ending in CRLF, with no "
                             "whitespace before the colon, no folding and no control characters.")
        lines.append(line)
    return headers_factory(io.BytesIO(b"".join(lines) + b"\r\n"))


def check_framing(headers, version: str) -> None:
    """Refuse a request whose length a proxy in front could read otherwise (RFC 9112 §6.1, §6.3), or whose
    Host is ambiguous (§3.2); a lone chunked coding is left as exactly `chunked`, as gevent compares it."""
    given_id = headers.get("X-Request-ID")
    codings = [c.strip().lower() for v in headers.get_all("Transfer-Encoding") or [] for c in v.split(",")]
    lengths = headers.get_all("Content-Length") or []
    hosts = headers.get_all("Host") or []
    problem = None
    if len(hosts) > 1 or (not hosts and version == "HTTP/1.1"):
        problem = "An HTTP/1.1 request must have exactly one Host header."
    elif codings and lengths:
        problem = "A request may not have both Content-Length and Transfer-Encoding."
    elif codings and version != "HTTP/1.1":
        problem = "Transfer-Encoding is not accepted on an HTTP/1.0 request."
    elif codings and codings != ["chunked"]:
        problem = "The only Transfer-Encoding accepted is 'chunked', once."
    elif len(lengths) > 1:
        problem = "A request may have only one Content-Length."
    elif lengths and not CONTENT_LENGTH.fullmatch(lengths[0].strip()):
        problem = "Content-Length must be a decimal number of bytes."
    if problem:
        raise BadFraming(problem, given_id)
    if codings:
        del headers["Transfer-Encoding"]
        headers["Transfer-Encoding"] = "chunked"


def refusal(status: str, message: str, given_id: str | None = None) -> bytes:
    """A whole error response that closes the connection: contract JSON, with its request id."""
    body = json.dumps({"error": message, "code": "invalid_request"}).encode()
    return (b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Type: application/json\r\nX-Request-ID: %s\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status.encode(), request_id(given_id).encode(), len(body), body))


class ReadDeadline(TimeoutError):
    """A read on a client connection outlasted its deadline."""


class _DeadlineReader:
    """The connection's buffered reader, whose reads fail once the handler's deadline has passed."""

    def __init__(self, raw, handler: "DeadlineHandler"):
        self._raw = raw
        self._handler = handler

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:
        self._raw.close()

    def _bounded(self, read, *args):
        deadline = self._handler.read_deadline
        if deadline is None:
            return read(*args)
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise ReadDeadline("the client was too slow")
            with gevent.Timeout(remaining, ReadDeadline("the client was too slow")):
                return read(*args)
        except ReadDeadline:
            self._handler.close_connection = True
            raise

    def read(self, *args):
        return self._bounded(self._raw.read, *args)

    def readline(self, *args):
        return self._bounded(self._raw.readline, *args)

    def readinto(self, buffer):
        return self._bounded(self._raw.readinto, buffer)

    def __getattr__(self, name):
        return getattr(self._raw, name)


_waiting: "OrderedDict[int, DeadlineHandler]" = OrderedDict()  # this process's connections waiting for headers


class DeadlineHandler(PyWSGIHandler):
    """gunicorn's pywsgi handler with the read deadlines and shedding of the module docstring."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def __init__(self, sock, address, server, rfile=None):
        super().__init__(sock, address, server, rfile)
        self.read_deadline: float | None = None
        self.waiting_since = 0.0
        self.was_shed = False
        self.served = False  # whether a request was read on this connection
        self.rfile = _DeadlineReader(self.rfile, self)

    def read_requestline(self):
        # Before a kept-alive connection's next request, a turn of the event loop: gevent switches only
        # at a read or write that would block, and a connection whose next request is already there
        # never blocks (section "Turns"). A new connection's first request has waited its turn already.
        if self.served:
            gevent.sleep(TURN_S)
        self.served = True
        self.waiting_since = time.monotonic()
        self.read_deadline = self.waiting_since + self.header_timeout_s
        _shed(self.server.pool)
        _waiting[id(self)] = self
        try:
            return super().read_requestline()
        except BaseException:
            _waiting.pop(id(self), None)
            raise

    def read_request(self, raw_requestline):
        try:
            parsed = super().read_request(raw_requestline)
        finally:
            _waiting.pop(id(self), None)
        if self.was_shed:  # the headers ended because the connection was shut, not because they were complete
            raise ReadDeadline("the connection was shed")
        self.read_deadline = time.monotonic() + self.body_timeout_s
        return parsed

    def handle_one_request(self):
        try:
            return super().handle_one_request()
        finally:
            _waiting.pop(id(self), None)

    def MessageClass(self, rfile, *args):
        headers = read_fields(rfile)
        check_framing(headers, self.request_version)
        return headers

    def _handle_client_error(self, ex):
        if isinstance(ex, ReadDeadline):
            self.close_connection = True
            if self.was_shed:
                return None  # closed without an answer: nobody reads it
            return "408", refusal("408 Request Timeout", "The request headers did not arrive in time.")
        if isinstance(ex, BadFraming):
            self.close_connection = True
            log.warning("refused a request from %s: %s", self.client_address, ex)
            return "400", refusal("400 Bad Request", str(ex), ex.given_id)
        return super()._handle_client_error(ex)

    def shed(self) -> None:
        """Close this connection, which is waiting for its request: its reader sees the end at once."""
        _waiting.pop(id(self), None)
        self.was_shed = True
        self.close_connection = True
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass


def _shed(pool) -> None:
    """While the pool is nearly full, close its connections that have waited too long for their headers."""
    size = getattr(pool, "size", None)
    if not size or pool.free_count() >= max(1, size // SHED_SHARE):
        return
    patience = time.monotonic() - SHED_AFTER_S
    for handler in [h for h in _waiting.values() if h.server.pool is pool and h.waiting_since <= patience]:
        handler.shed()


def _shed_forever() -> None:
    """Shed on a timer too: a full pool accepts no connection that would trigger it."""
    while True:
        gevent.sleep(SHED_EVERY_S)
        for pool in {id(h.server.pool): h.server.pool for h in list(_waiting.values())}.values():
            _shed(pool)


class Worker(GeventPyWSGIWorker):
    """`gevent_pywsgi` with `DeadlineHandler`."""

    wsgi_handler = DeadlineHandler

    def run(self):
        gevent.spawn(_shed_forever)
        super().run()


def set_deadlines(header_s: float, body_s: float) -> None:
    """The read deadlines of every connection this process (and the workers it forks) will serve."""
    DeadlineHandler.header_timeout_s = header_s
    DeadlineHandler.body_timeout_s = body_s
