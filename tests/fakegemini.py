"""A local fake of the Gemini REST API (`POST /{version}/models/{model}:generateContent`) for tests.

It speaks the real wire format (camelCase JSON, base64 `inlineData`, Google's error body), so the
real google-genai client, or a real worker process given `GEMINI_BASE_URL=<fake.url>`, can talk
to it. Tests script what it answers and read what it was sent:

    with FakeGemini() as fake:
        fake.push(error(429, retry_delay="7s"), ok())
        ...                                   # point the code at fake.url
        assert fake.requests[0].images == [sent_png]

Replies are consumed one per request; when the queue is empty `default` (an `ok()`) answers.
Knobs for load tests: `default = slow(6, ok(big_png(1_200_000)))` answers like the real API (a PNG of
about 1.2 MB, base64 in JSON, after 6 s); `limit(n, window_s)` answers 429 with RetryInfo to any
request beyond `n` in a moving window, as Gemini's per-project quota does (`rate_limited` counts them).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def big_png(target_bytes: int = 1_200_000, seed: int = 0) -> bytes:
    """A real PNG of about `target_bytes` (a noisy square that zlib cannot shrink much), like a generated image."""
    import random

    from PIL import Image

    side = int((target_bytes / 3) ** 0.5) + 1
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def sample_png(size: int = 64) -> bytes:
    """A small real PNG: black stencil-like lines on white."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((size // 8, size // 8, size * 7 // 8, size * 7 // 8), outline="black", width=3)
    draw.line((size // 4, size // 2, size * 3 // 4, size // 2), fill="black", width=3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Reply:
    """One scripted answer: HTTP status, JSON body (or raw bytes), extra headers, a delay first."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    content_type: str = "application/json; charset=UTF-8"
    disconnect: bool = False


def _usage() -> dict[str, Any]:
    return {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302}


def ok(image_bytes: bytes | None = None, text: str | None = None, mime_type: str = "image/png") -> Reply:
    """A successful answer with one inline image (by default `sample_png()`), optionally with text."""
    data = sample_png() if image_bytes is None else image_bytes
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"text": text})
    parts.append({"inlineData": {"mimeType": mime_type, "data": base64.b64encode(data).decode("ascii")}})
    return Reply(body={
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": _usage(),
        "modelVersion": "fake",
        "responseId": "fake-response",
    })


PER_MINUTE_QUOTA = "GenerateRequestsPerMinutePerProjectPerModel"  # as Gemini names it in a QuotaFailure


def error(
    code: int,
    status: str | None = None,
    message: str | None = None,
    retry_delay: str | float | None = None,
    retry_after: str | None = None,
    quota_id: str | None = None,
) -> Reply:
    """Google's error body `{"error": {code, message, status, details}}`, with RetryInfo and a QuotaFailure
    naming `quota_id` if given."""
    details: list[dict[str, Any]] = []
    if quota_id is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model", "quotaId": quota_id}]})
    if retry_delay is not None:
        delay = retry_delay if isinstance(retry_delay, str) else f"{retry_delay}s"
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    body: dict[str, Any] = {
        "code": code,
        "message": message if message is not None else f"Fake error {code}.",
        "status": status or STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        body["details"] = details
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Reply(status=code, body={"error": body}, headers=headers)


def blocked(reason: str = "SAFETY") -> Reply:
    """The prompt was blocked: `promptFeedback.blockReason`, no candidates."""
    return Reply(body={"promptFeedback": {"blockReason": reason}, "usageMetadata": _usage(), "modelVersion": "fake"})


def finish(reason: str = "IMAGE_SAFETY", message: str | None = None) -> Reply:
    """A candidate that stopped with `finishReason` (IMAGE_SAFETY, NO_IMAGE, ...) and no image."""
    candidate: dict[str, Any] = {"content": {"role": "model"}, "finishReason": reason, "index": 0}
    if message:
        candidate["finishMessage"] = message
    return Reply(body={"candidates": [candidate], "usageMetadata": _usage(), "modelVersion": "fake"})


def text_only(text: str = "I can't draw that.") -> Reply:
    """An answer with text but no image."""
    return Reply(body={
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": _usage(),
        "modelVersion": "fake",
    })


def slow(seconds: float, then: Reply | None = None) -> Reply:
    """Wait `seconds` before answering with `then` (an `ok()` by default)."""
    then = ok() if then is None else then
    return Reply(then.status, then.body, then.headers, seconds, then.raw, then.content_type, then.disconnect)


def raw(status: int, body: bytes, content_type: str = "text/html") -> Reply:
    """A non-JSON answer, like a proxy's HTML error page."""
    return Reply(status=status, raw=body, content_type=content_type)


def disconnect() -> Reply:
    """Close the connection without answering."""
    return Reply(disconnect=True)


@dataclass(frozen=True)
class Request:
    """What one request carried."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    api_version: str | None
    model: str | None
    text: str
    images: list[bytes]
    mime_types: list[str]

    @property
    def api_key(self) -> str | None:
        """The `x-goog-api-key` header."""
        return self.headers.get("x-goog-api-key")


def _b64decode(data: str) -> bytes:
    """Standard or URL-safe base64, padded or not."""
    data = data.strip()
    padded = data + "=" * (-len(data) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_" if ("-" in data or "_" in data) else None, validate=True)
    except binascii.Error:
        return base64.urlsafe_b64decode(padded)


def _parse(method: str, path: str, headers: dict[str, str], body: bytes) -> Request:
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        payload = None
    segments = path.split("?", 1)[0].strip("/").split("/")
    api_version = segments[0] if segments and segments[0] else None
    model = None
    if len(segments) >= 3 and segments[1] == "models":
        model = "/".join(segments[2:]).rsplit(":", 1)[0]
    texts: list[str] = []
    images: list[bytes] = []
    mime_types: list[str] = []
    contents = payload.get("contents", []) if isinstance(payload, dict) else []
    for content in contents if isinstance(contents, list) else []:
        for part in content.get("parts", []) if isinstance(content, dict) else []:
            if "text" in part:
                texts.append(part["text"])
            blob = part.get("inlineData") or part.get("inline_data")
            if blob:
                images.append(_b64decode(blob.get("data", "")))
                mime_types.append(blob.get("mimeType") or blob.get("mime_type") or "")
    return Request(method, path, headers, payload, api_version, model, "\n".join(texts), images, mime_types)


class FakeGemini:
    """A fake Gemini server on 127.0.0.1 and a free port, in a daemon thread; thread-safe."""

    def __init__(self, default: Reply | None = None, api_key: str | None = None):
        self._initial = (default if default is not None else ok(), api_key)
        self.default, self.api_key = self._initial
        self._replies: deque[Reply] = deque()
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._limit: tuple[int, float] | None = None
        self._accepted: deque[float] = deque()
        self.rate_limited = 0

    @property
    def url(self) -> str:
        """The base URL to give the client (`GEMINI_BASE_URL`)."""
        if self._server is None:
            raise RuntimeError("FakeGemini is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[Request]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def push(self, *replies: Reply) -> "FakeGemini":
        """Queue replies; each request takes the next one."""
        with self._lock:
            self._replies.extend(replies)
        return self

    def reset(self) -> None:
        """Forget queued replies, recorded requests and the rate limit; restore the initial default and key."""
        with self._lock:
            self._replies.clear()
            self._requests.clear()
            self.default, self.api_key = self._initial
            self._limit, self.rate_limited = None, 0
            self._accepted.clear()

    def limit(self, n: int, window_s: float = 60.0) -> "FakeGemini":
        """Answer 429 (RESOURCE_EXHAUSTED, RetryInfo until a place frees) beyond `n` requests per moving window."""
        with self._lock:
            self._limit = (n, window_s)
            self._accepted.clear()
        return self

    def _over_limit(self) -> Reply | None:
        if self._limit is None:
            return None
        n, window = self._limit
        now = time.monotonic()
        while self._accepted and self._accepted[0] <= now - window:
            self._accepted.popleft()
        if len(self._accepted) < n:
            self._accepted.append(now)
            return None
        self.rate_limited += 1
        wait = max(0.1, self._accepted[0] + window - now)
        return error(429, message="Quota exceeded for requests per minute.", retry_delay=f"{wait:.3f}s",
                     quota_id=PER_MINUTE_QUOTA)

    def start(self) -> "FakeGemini":
        """Start serving; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-gemini", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow replies still waiting are abandoned."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "FakeGemini":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _take(self, request: Request) -> Reply:
        with self._lock:
            self._requests.append(request)
            if not request.path.split("?", 1)[0].endswith(":generateContent"):
                return error(404, "NOT_FOUND", "The fake only serves models/*:generateContent.")
            if self.api_key is not None and request.api_key != self.api_key:
                return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
            refused = self._over_limit()
            if refused is not None:
                return refused
            return self._replies.popleft() if self._replies else self.default


class OwnProcess:
    """A FakeGemini in a forked process of its own, for benchmarks: its threads then take no turn of the
    GIL from the load client. `url` while running; `calls` (requests received) once stopped."""

    def __init__(self, default: Reply | None = None):
        import multiprocessing

        self.default, self.calls, self.url = default, None, ""
        self._conn, child = multiprocessing.get_context("fork").Pipe()
        self._proc = multiprocessing.get_context("fork").Process(target=self._serve, args=(child,), daemon=True)

    def _serve(self, conn) -> None:
        with FakeGemini(self.default) as fake:
            conn.send(fake.url)
            conn.recv()
            conn.send(len(fake.requests))

    def __enter__(self) -> "OwnProcess":
        self._proc.start()
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._conn.send("stop")
        self.calls = self._conn.recv()
        self._proc.join(10)


def serve(default: Reply | None = None, api_key: str | None = None) -> Iterator[FakeGemini]:
    """Generator for a pytest fixture: `def gemini(): yield from serve()`."""
    with FakeGemini(default, api_key) as fake:
        yield fake


def _handler(fake: FakeGemini) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._send(fake._take(_parse("POST", self.path, headers, body)))

        def do_GET(self) -> None:
            self._send(error(404, "NOT_FOUND", "The fake only serves generateContent."))

        def _send(self, reply: Reply) -> None:
            if reply.delay and fake._stopping.wait(reply.delay):
                return
            if reply.disconnect:
                self.close_connection = True
                return
            payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
