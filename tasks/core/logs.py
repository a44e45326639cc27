"""Logging for both services: every line one JSON object (LOG_FORMAT=json, the default) or plain text.

One handler on the root logger, set up once per process, carries everything: inkq's own lines,
gunicorn's (its loggers are emptied and propagate here, `api/cli.py`), rq's worker, pool and
scheduler lines (rq adds its own handlers only when no ancestor has one), and Python warnings.
JSON comes from python-json-logger.

Context fields (`jobId`, `queue`, `userId`, `attempt`, `requestId`, `durationMs`) come from the
record's `extra`, else from `bind()`: the API binds the request id and user per request (a
contextvar, so per greenlet under gevent), a worker binds the job it dequeued until it is handled,
and its horse inherits that at fork. Lines carry no tokens, keys, image bytes or signed URLs: the
code logs none, and access lines log the path without its query and with `/files/<token>` cut.

Text lines cannot be forged: a request path, a user id or an error text carrying a newline would
otherwise start a line of its own that reads like a record. The text formatter escapes
control characters (C0, DEL, C1 and the Unicode line and paragraph separators) in the message and the
context fields as `\\n`, `\\r` or `\\xNN` / `\\uNNNN`, and indents every further line of a record (a
traceback) by four spaces, so each line that starts at column 0 is the first line of a record.
JSON lines are safe by construction (the encoder escapes control characters).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
import threading
import time
from datetime import datetime, timezone

from pythonjsonlogger.json import JsonFormatter

from .settings import LogSettings

FIELDS = ("jobId", "queue", "userId", "attempt", "requestId", "durationMs")
# Libraries whose DEBUG lines carry what goes over the wire: botocore logs an S3 PUT's body (an image),
# google-genai an undecodable answer chunk, httpcore/httpx and urllib3 connection traffic, Pillow an image's
# chunks. At LOG_LEVEL=DEBUG they stay at INFO: no image byte or prompt reaches a log line.
WIRE_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "requests", "httpcore", "httpx", "google_genai",
                "google.genai", "hpack", "PIL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("inkq_log_context", default={})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HANDLER_FLAG = "_inkq_handler"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def bind(**fields) -> contextvars.Token:
    """Add fields to every line logged from this context (thread, greenlet, process) until `unbind`."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def unbind(token: contextvars.Token) -> None:
    """Undo one `bind`."""
    _context.reset(token)


def clear() -> None:
    """Drop every bound field (a worker between jobs)."""
    _context.set({})


@contextlib.contextmanager
def bound(**fields):
    """`bind` for the length of a block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current() -> dict:
    """The fields bound now."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record that does not already carry them."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class Json(JsonFormatter):
    """`time`, `level`, `logger`, `message`, then the context fields and any other `extra`."""

    def __init__(self):
        super().__init__(reserved_attrs=[*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message",
                                         "asctime", "color_message"])

    def add_fields(self, log_record: dict, record: logging.LogRecord, message_dict: dict) -> None:
        rest: dict = {}
        super().add_fields(rest, record, message_dict)
        rest.pop("message", None)
        log_record["time"] = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        log_record["level"] = record.levelname.lower()
        log_record["logger"] = record.name
        log_record["message"] = _ANSI.sub("", record.getMessage())
        if "exc_info" in rest:
            rest["exception"] = rest.pop("exc_info")
        log_record.update(rest)


class Text(logging.Formatter):
    """Readable lines for `make run`: the context fields follow the message as key=value."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = escape_controls(super().formatMessage(record))
        extras = " ".join(f"{key}={escape_controls(str(getattr(record, key)))}" for key in FIELDS
                          if hasattr(record, key))
        return f"{line} [{extras}]" if extras else line

    def format(self, record: logging.LogRecord) -> str:
        head, sep, tail = super().format(record).partition("\n")
        if not sep:
            return head
        return head + "".join("\n    " + escape_controls(part) for part in tail.split("\n"))


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape, so it cannot break a line."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), m.group().encode("unicode_escape").decode()), text)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT (`json` unless `text`)."""
    return Text() if (log_format or "json").lower() == "text" else Json()


def configure(log_format: str | None = None, level: str | None = None) -> None:
    """Send every logger of this process to stderr in one format; call once per process, early.

    Replaces a handler an earlier call installed (a forked child reconfiguring is harmless). Without a
    format or a level, LOG_FORMAT's or LOG_LEVEL's (`tasks.core.settings.LogSettings`)."""
    if not (log_format and level):
        given = LogSettings.from_env()
        log_format, level = log_format or given.format, level or given.level
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)
    root.setLevel(level.upper())
    inkq = logging.getLogger("inkq")
    inkq.setLevel(logging.INFO)  # inkq's own lines (jobs, recovery, access) stay on at LOG_LEVEL=WARNING
    for name in WIRE_LOGGERS:  # never their DEBUG lines: they carry request and answer bodies
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda args: _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback,
                                                      getattr(args.thread, "name", None))


def _log_uncaught(exc_type, exc, tb, thread: str | None = None) -> None:
    """An exception nobody caught is one log line (with its traceback), not raw text on stderr."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    where = f" in thread {thread}" if thread else ""
    logging.getLogger("inkq.uncaught").critical("uncaught %s%s", exc_type.__name__, where, exc_info=(exc_type, exc, tb))


def since_ms(started: float) -> float:
    """Milliseconds since a `time.perf_counter()` reading, for `durationMs`."""
    return round((time.perf_counter() - started) * 1000, 1)
