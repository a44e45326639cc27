"""The Gemini image provider: one `generate_content` call per attempt, every failure classified.

Design decisions:
- rq owns retries. The SDK is told never to retry (`HttpRetryOptions(attempts=1)`; left unset,
  google-genai 3.6.1 does not retry either, but `HttpRetryOptions()` with no `attempts` would mean 5)
  and never to continue a cut-off answer on its own (`automatic_continuation=False`), so one
  attempt is exactly one HTTP request bounded by `gemini_timeout_s`.
- `classify` is the one place that turns a provider failure (an exception, or an answer without
  an image) into `TransientError` or `FinalError`. Its messages are shown to the job's owner: no
  tracebacks, no API keys, no raw response bodies. The original exception stays chained for logs.
- Every call asks `tasks/quota.py` first (the fleet's `GEMINI_MAX_RPM` budget, the turns between users, and
  the hold after a 429), and tells it how the call ended (`taken`: every call that reached the provider
  and was not refused with a 429 counts against the quota).
- Only this module imports the SDK; the API never imports it.
- One `genai.Client` per process and settings (`client_for`), shared by every job thread of a worker
  (`tasks/runtime/slots.py`): the client is thread-safe, and its httpx pool keeps connections (and the TLS
  context) instead of building them for every call. Its pool holds `POOL_CONNECTIONS` connections,
  above the highest `CONCURRENCY_*` a worker service is expected to run.
- At most `ANSWERS_AT_ONCE` answers per process are read and decoded at once (`answer_gate`). An image
  answer is about 1.6 MB of base64 JSON, and reading and decoding it holds about 6 MB (the body, its
  text, the parsed JSON, the image bytes, the decoded image) for 20-30 ms of CPU. With 100 calls in
  flight the answers arrive together, and every thread read its body at once: the worker's PSS peaked
  at 360-415 MB. Behind the gate an answer waits in its socket (the kernel's buffers,
  then TCP flow control), which costs it milliseconds against the provider's 5-8 s.
"""
from __future__ import annotations

import contextlib
import email.utils
import importlib
import json
import logging
import re
import threading
import time
from typing import Any, Iterable

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from rq import get_current_job

from tasks import quota
from tasks.core import metrics
from tasks.core.errors import FinalError, JobError, TransientError
from tasks.core.settings import WorkerSettings, current

log = logging.getLogger("inkq.gemini")

NOT_CONFIGURED = "No image provider is configured."

STYLES = {
    "standard": "Use a medium, even line weight that reads well at tattoo size.",
    "fine": "Use fine, thin lines and keep small details; fine-line tattoo style.",
    "bold": "Use bold, thick lines and simplify small details; traditional tattoo line weight.",
}

STENCIL = (
    "Turn this image into a clean tattoo stencil: pure black line art on a pure white "
    "background. No shading, no gradients, no grey tones, no colour and no filled areas. "
    "Draw closed, continuous outlines, keep the subject, proportions and composition, "
    "drop the background, and keep the original aspect ratio. {weight} "
    "Return only the stencil image."
)

TOPOGRAPHIC = (
    "Turn this image into a topographic tattoo stencil: render the subject's form with "
    "contour lines (isolines), like a topographic map, following its shapes, depth and "
    "light. Pure black lines on a pure white background, evenly spaced, smooth and closed "
    "where possible. No shading, no gradients, no colour and no filled areas. Keep the "
    "subject, proportions and composition, and keep the original aspect ratio. "
    "Return only the stencil image."
)

ENHANCE = (
    "Enhance this image: make it cleaner and sharper with about twice the fine detail, and "
    "remove noise, blur and compression artefacts. Keep exactly the same content, "
    "composition, framing, colours and style; do not add, remove or move anything. "
    "Return only the enhanced image."
)

IA_GEN = (
    "Create a new, original tattoo design from the description below. Unless the "
    "description asks for something else, make it stencil-ready: black ink line art on a "
    "pure white background, closed outlines, no shading, no colour, centred with a clear "
    "margin, and no text or signature unless the description asks for them. "
    "Return only the design image.\n\nDescription: {description}"
)

USER_PROMPT_LIMIT = 2000

SAFETY_REASONS = frozenset({
    "SAFETY", "IMAGE_SAFETY", "PROHIBITED_CONTENT", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST",
    "SPII", "RECITATION", "IMAGE_RECITATION", "MODEL_ARMOR",
})
"""Finish reasons that mean the provider refused on policy grounds (any prompt block reason does too)."""

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

MIN_SECRET = 6
"""Shorter values are not redacted: replacing them would garble ordinary words (test keys only)."""

GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{20,}")


def _transport_errors() -> tuple[tuple[type, ...], ...]:
    """Timeout, network, other transport and never-sent exception classes of the installed httpx packages."""
    timeouts: list[type] = [TimeoutError]
    network: list[type] = [ConnectionError]
    other: list[type] = []
    not_sent: list[type] = []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        network += [module.NetworkError, module.RemoteProtocolError, module.ProxyError]
        other.append(module.TransportError)
        not_sent += [module.ConnectError, module.ConnectTimeout, module.PoolTimeout, module.ProxyError,
                     module.LocalProtocolError, module.UnsupportedProtocol]
    return tuple(timeouts), tuple(network), tuple(other), tuple(not_sent)


TIMEOUT_ERRORS, NETWORK_ERRORS, TRANSPORT_ERRORS, NOT_SENT_ERRORS = _transport_errors()


def available(settings: WorkerSettings) -> bool:
    """Whether the Gemini provider can be used (an API key is set)."""
    return bool(settings.gemini_api_key.strip())


def prompt_for(operation: str, style: str | None, user_prompt: str | None) -> str:
    """The instruction text sent with an operation (`stencil`, `enhance`, `ia-gen`)."""
    extra = _user_text(user_prompt)
    if operation == "ia-gen":
        if not extra:
            raise FinalError("Describe the tattoo design you want generated.")
        return IA_GEN.format(description=extra)
    if operation == "stencil":
        style = (style or "standard").lower()
        if style == "topographic":
            prompt = TOPOGRAPHIC
        elif style in STYLES:
            prompt = STENCIL.format(weight=STYLES[style])
        else:
            raise FinalError(f"Unknown stencil style '{style[:40]}'.")
    elif operation == "enhance":
        prompt = ENHANCE
    else:
        raise ValueError(f"no Gemini prompt for operation {operation!r}")
    if extra:
        prompt += f"\n\nAdditional instructions from the user: {extra}"
    return prompt


ANSWERS_AT_ONCE = 4
GATE_WAIT_S = 30.0  # past this, an answer is read without its turn rather than wait longer


class AnswerGate:
    """Lets at most `n` threads at once between an answer's headers and the end of their `scope()`.

    httpx calls its response hooks once the status line and headers are in and before it reads the
    body, so `enter` (the hook) is where a thread takes its turn; the outermost `scope()` of that thread
    gives it back. A hook outside any scope takes no turn. Turns are held by thread id, and a full gate
    first takes back the turns of threads that have ended: a slot thread ended by the supervisor gets an
    asynchronous exception, which could land inside `scope`'s own clean-up and skip the give-back."""

    def __init__(self, n: int):
        self.n = n
        self._holders: set[int] = set()
        self._changed = threading.Condition()
        self._local = threading.local()
        self.peak = 0  # the most turns held at once

    @property
    def in_use(self) -> int:
        with self._changed:
            return len(self._holders)

    @contextlib.contextmanager
    def scope(self):
        local = self._local
        local.depth = getattr(local, "depth", 0) + 1
        try:
            yield
        finally:
            local.depth -= 1
            if local.depth == 0:
                with self._changed:
                    self._holders.discard(threading.get_ident())
                    self._changed.notify()

    def enter(self, response=None) -> None:
        if not getattr(self._local, "depth", 0):
            return
        me, deadline = threading.get_ident(), time.monotonic() + GATE_WAIT_S
        with self._changed:
            while me not in self._holders:
                if len(self._holders) >= self.n:
                    self._holders &= {thread.ident for thread in threading.enumerate()}
                if len(self._holders) < self.n:
                    self._holders.add(me)
                    self.peak = max(self.peak, len(self._holders))
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return  # read without a turn rather than wait longer
                self._changed.wait(min(left, 0.5))


answer_gate = AnswerGate(ANSWERS_AT_ONCE)


def generate_image(
    settings: WorkerSettings, prompt: str, image: bytes | None = None, mime_type: str | None = None
) -> bytes:
    """Send the prompt (and image) to Gemini in one request; return the first image it answers with."""
    if not available(settings):
        raise FinalError(NOT_CONFIGURED)
    contents: list[Any] = [prompt]
    if image is not None:
        contents.append(types.Part.from_bytes(data=image, mime_type=mime_type or _sniff(image)))
    config = types.GenerateContentConfig(
        response_modalities=["IMAGE", "TEXT"], automatic_continuation=False
    )
    job = get_current_job()
    redis = job.connection if job is not None else None
    if redis is not None:
        quota.before_call(redis, settings.gemini_model, str(job.meta.get("user") or ""))
    started, sent_at = time.perf_counter(), time.time()
    with answer_gate.scope():  # the answer's turn, taken in the response hook, is given back here
        try:
            try:
                response = client_for(settings).models.generate_content(
                    model=settings.gemini_model, contents=contents, config=config
                )
            except Exception as exc:
                if redis is not None:
                    _tell_quota(redis, settings.gemini_model, sent_at, exc)
                raise
            if redis is not None:
                _tell_quota(redis, settings.gemini_model, sent_at)
            data = first_image(response)
            if data is None:
                raise classify(response, secrets=[settings.gemini_api_key])
        except Exception as exc:
            error = exc if isinstance(exc, JobError) else classify(exc, secrets=[settings.gemini_api_key])
            outcome = "retryable" if isinstance(error, TransientError) else "final"
            _record(outcome, started, error.message)
            if error is exc:
                raise
            raise error from exc
        _record("ok", started)
        return data


def taken(exc: BaseException | None) -> bool:
    """Whether the provider took a call that ended with `exc` (None: it answered): every call that reached
    it and was not refused with a 429. A failure to connect, or one raised before the request was sent,
    never reached it; an answer of any other status, or an answer cut off or late, did (`tasks/quota.py`)."""
    if exc is None:
        return True
    if isinstance(exc, genai_errors.APIError):
        return exc.code != 429
    if isinstance(exc, NOT_SENT_ERRORS):
        return False
    return isinstance(exc, TRANSPORT_ERRORS + (genai_errors.UnknownApiResponseError, json.JSONDecodeError))


def _tell_quota(redis, model: str, sent_at: float, exc: BaseException | None = None) -> None:
    """How a call ended, for the fleet's quota: a 429 holds the calls (and may teach the limit); a call the
    provider took counts as taken."""
    if isinstance(exc, genai_errors.APIError) and exc.code == 429:
        quota.rate_limited(redis, model, retry_after(exc), learn=per_minute_quota(exc))
    elif taken(exc):
        quota.taken(redis, model, sent_at)


_clients: dict[tuple, genai.Client] = {}
_clients_lock = threading.Lock()


def client_for(settings: WorkerSettings) -> genai.Client:
    """This process's client for these settings (key, address, timeout), made once."""
    key = (settings.gemini_api_key, settings.gemini_base_url, settings.gemini_timeout_s)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = genai.Client(
                vertexai=False, api_key=settings.gemini_api_key, http_options=_http_options(settings))
        return client


def warm(settings: WorkerSettings | None = None) -> None:
    """Build this process's client for `settings` (this process's worker settings by default) now, when
    a key is set (the worker service's supervisor, before its forks: every queue process inherits it).
    Left to the first call, building it (two TLS contexts, the CA bundle read for each) took about 0.3 s
    of the stencil queue's CPU in the first second of a 500-user burst, while the other 99 job threads
    waited for it and the API's submissions waited for the cores."""
    settings = settings or current()
    if available(settings):
        client_for(settings)
        # pydantic completes google-genai's models on their first use: the request's and the answer's
        # here, once, rather than in the first job of every process (about 30 ms of a first call's 55).
        types.Part.from_bytes(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")
        types.GenerateContentConfig(response_modalities=["IMAGE", "TEXT"], automatic_continuation=False)
        types.GenerateContentResponse.model_validate({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "warm"}, {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}, "finishReason": "STOP"}]})


def _record(outcome: str, started: float, error: str | None = None) -> None:
    """One Gemini call in the job metrics and the log (the message is the user-safe one, no key)."""
    took = time.perf_counter() - started
    metrics.gemini_call(outcome, took)
    log.info("gemini call: %s", outcome if error is None else f"{outcome}: {error}",
             extra={"durationMs": round(took * 1000, 1)})


def first_image(response: types.GenerateContentResponse) -> bytes | None:
    """The bytes of the first (non-thought) inline image of the first candidate, if any."""
    for part in _parts(response):
        blob = part.inline_data
        if blob and blob.data and not part.thought and (blob.mime_type or "image/").startswith("image/"):
            return blob.data
    return None


def classify(
    failure: BaseException | types.GenerateContentResponse, secrets: Iterable[str] = ()
) -> JobError:
    """Decide whether a provider failure is retried: a `TransientError` or a `FinalError`, safe to show."""
    secrets = [s for s in secrets if len(s) >= MIN_SECRET]
    if isinstance(failure, types.GenerateContentResponse):
        return _classify_answer(failure, secrets)
    if isinstance(failure, JobError):
        return failure
    if isinstance(failure, genai_errors.APIError):
        return _classify_status(failure, secrets)
    if isinstance(failure, TIMEOUT_ERRORS):
        return TransientError("The image provider did not answer in time.")
    if isinstance(failure, NETWORK_ERRORS):
        return TransientError("Could not reach the image provider.")
    if isinstance(failure, TRANSPORT_ERRORS):
        return FinalError("The image provider is misconfigured (its address cannot be used).")
    if isinstance(failure, (genai_errors.UnknownApiResponseError, json.JSONDecodeError)):
        return TransientError("The image provider sent an answer that could not be read.")
    return FinalError("The image provider failed unexpectedly.")


def _classify_status(exc: genai_errors.APIError, secrets: list[str]) -> JobError:
    code = exc.code or 0
    detail = _detail(exc, secrets)
    if code == 429:
        return TransientError(
            "The image provider is rate-limiting requests (HTTP 429).", retry_after=retry_after(exc)
        )
    if code in RETRYABLE_STATUS or (code >= 500 and code != 501):
        return TransientError(
            f"The image provider is temporarily unavailable ({detail}).", retry_after=retry_after(exc)
        )
    return FinalError(f"The image provider rejected the request ({detail}).")


def _classify_answer(response: types.GenerateContentResponse, secrets: list[str]) -> JobError:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        reason = _name(feedback.block_reason)
        return FinalError(f"The provider refused this request for safety reasons (prompt blocked: {reason}).")
    candidates = response.candidates or []
    reason = _name(candidates[0].finish_reason) if candidates and candidates[0].finish_reason else ""
    if reason in SAFETY_REASONS:
        return FinalError(f"The provider refused this request for safety reasons ({reason}).")
    if reason == "PUP_LIMITED_DISABLED":
        return FinalError("The image provider rejected the request (the account is limited).")
    said = _clean(" ".join(p.text for p in _parts(response) if p.text and not p.thought), secrets, 160)
    message = "The provider returned no image"
    if reason and reason not in ("STOP", "FINISH_REASON_UNSPECIFIED"):
        message += f" ({reason})"
    message += "."
    if said:
        message += f' It said: "{said}"'
    return FinalError(message)


def _error_details(exc: genai_errors.APIError) -> list:
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [item for item in details if isinstance(item, dict)] if isinstance(details, list) else []


def per_minute_quota(exc: genai_errors.APIError) -> bool:
    """Whether a 429 names a per-minute quota (`google.rpc.QuotaFailure`, as Gemini's quota errors carry):
    only such a refusal says how many calls a minute the project gets. A 429 from overload, or from a
    daily quota, says nothing about the rate."""
    for item in _error_details(exc):
        if str(item.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            for violation in item.get("violations") or []:
                names = f"{violation.get('quotaId', '')} {violation.get('quotaMetric', '')}" \
                    if isinstance(violation, dict) else ""
                if "perminute" in names.lower().replace("_", "").replace("-", ""):
                    return True
    return False


def retry_after(exc: genai_errors.APIError) -> float | None:
    """Seconds to wait from Google's `RetryInfo.retryDelay`, else from a `Retry-After` header."""
    for item in _error_details(exc):
        if str(item.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = _duration(item.get("retryDelay"))
            if delay is not None:
                return delay
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return _retry_after_header(headers.get("retry-after") if headers is not None else None)


def _duration(value: Any) -> float | None:
    """Seconds from a protobuf Duration as JSON ("12s", "1.5s") or as {"seconds", "nanos"}."""
    if isinstance(value, dict):
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)s\s*", str(value or ""))
    return float(match.group(1)) if match else None


def _retry_after_header(value: str | None) -> float | None:
    """Seconds from an HTTP `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _user_text(user_prompt: str | None) -> str:
    """The user's prompt on one line, bounded."""
    return " ".join((user_prompt or "").split())[:USER_PROMPT_LIMIT]


POOL_CONNECTIONS = 256


def _limits():
    """Connection limits for the SDK's HTTP client (google-genai 3.6.1 uses httpx2 when it is installed,
    else httpx; both default to 100 connections, 20 kept alive, so calls past 20 at once reconnect)."""
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.Limits(max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS)
    return None


def _http_options(settings: WorkerSettings) -> types.HttpOptions:
    return types.HttpOptions(
        base_url=settings.gemini_base_url or None,
        timeout=max(1, int(settings.gemini_timeout_s * 1000)),
        retry_options=types.HttpRetryOptions(attempts=1),
        client_args={"limits": _limits(), "event_hooks": {"response": [answer_gate.enter]}},
    )


def _parts(response: types.GenerateContentResponse) -> list[types.Part]:
    candidates = response.candidates or []
    content = candidates[0].content if candidates else None
    return list(content.parts or []) if content else []


def _detail(exc: genai_errors.APIError, secrets: list[str]) -> str:
    """'HTTP 403 PERMISSION_DENIED: <provider message>', the message cleaned and shortened."""
    detail = f"HTTP {exc.code}"
    if exc.status and re.fullmatch(r"[A-Z_]{3,40}", str(exc.status)):
        detail += f" {exc.status}"
    message = _clean(exc.message if isinstance(exc.message, str) else "", secrets, 200).rstrip(".")
    return f"{detail}: {message}" if message else detail


def _clean(text: str, secrets: list[str], limit: int) -> str:
    """One line of provider text that is safe to show: no secrets, no markup, no JSON, bounded."""
    text = " ".join(text.split())
    if not text or text[0] in "<{[":
        return ""
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    text = GOOGLE_KEY.sub("[redacted]", text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _name(value: Any) -> str:
    return str(getattr(value, "value", value) or "").upper()


def _sniff(image: bytes) -> str:
    """The MIME type of common image formats from their first bytes (PNG when unknown)."""
    if image.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    if image[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return "image/png"
