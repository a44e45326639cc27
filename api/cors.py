"""Cross-origin requests from browsers (`CORS_ORIGINS`): one WSGI layer around the whole app.

Design decisions:
- A WSGI layer, not a Flask extension: `GET /status/<id>` is answered below Flask (`api/fastpath.py`),
  so flask-cors (6.0, an `after_request` hook) would never see the most common request. wsgicors,
  the WSGI alternative, has had no release since 2017. The rules below fit in one small class that
  wraps the fast path and Flask alike, so there is one copy of them.
- Exact origins only (scheme, host and port, as the browser sends `Origin`); an allowed origin is
  echoed back, never `*`. No `Access-Control-Allow-Credentials`: the API authenticates with a Bearer
  header, which a cross-origin `fetch` sends without credentials mode, and it sets no cookies.
- Only the job paths (`JOB_PATHS`) take part. `/admin/*` (rq-dashboard included), `/metrics` and
  everything else never get an `Access-Control-Allow-Origin`, and their preflights go on to Flask,
  which answers them without one, so the browser refuses the call.
- A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin on a job path
  is answered here with 204, before authentication (browsers send no `Authorization` on a preflight).
- With `CORS_ORIGINS` set, every response carries `Vary: Origin`, since what a cache may hand out then
  depends on the caller's origin; with it empty the layer is not installed at all (today's behaviour).
"""
from __future__ import annotations

import re
from typing import Iterable

JOB_PATHS = re.compile(r"^/(generate|status/[^/]+(/events)?|result/[^/]+|jobs(/[^/]+(/data)?)?|credits|uploads)$")
ALLOW_METHODS = "GET, POST, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
EXPOSE_HEADERS = "X-Request-ID, Retry-After, Location"
MAX_AGE_S = 600


def parse_origins(value: str) -> frozenset[str]:
    """The origins of a comma-separated `CORS_ORIGINS`, without trailing slashes; `*` is refused."""
    origins = {part.strip().rstrip("/") for part in value.split(",") if part.strip()}
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s*]+", origin):
            raise ValueError(f"CORS_ORIGINS: {origin!r} is not an exact origin like https://app.example.com")
    return frozenset(origins)


def _with_vary(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers with `Origin` added to `Vary` (kept once, merged with what is there)."""
    out, vary = [], []
    for name, value in headers:
        if name.lower() == "vary":
            vary.extend(v.strip() for v in value.split(",") if v.strip())
        else:
            out.append((name, value))
    if not any(v.lower() == "origin" or v == "*" for v in vary):
        vary.append("Origin")
    out.append(("Vary", ", ".join(vary)))
    return out


class CrossOrigin:
    """WSGI middleware: CORS headers and preflights for the job paths, for the allowed origins only."""

    def __init__(self, wsgi_app, origins: frozenset[str]):
        self.wsgi_app = wsgi_app
        self.origins = origins

    def __call__(self, environ, start_response):
        origin = environ.get("HTTP_ORIGIN", "")
        allowed = origin in self.origins and JOB_PATHS.match(environ.get("PATH_INFO", "")) is not None
        if allowed and environ.get("REQUEST_METHOD") == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
            start_response("204 No Content", _with_vary([
                ("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Methods", ALLOW_METHODS),
                ("Access-Control-Allow-Headers", ALLOW_HEADERS), ("Access-Control-Max-Age", str(MAX_AGE_S)),
                ("Content-Length", "0")]))
            return [b""]

        def start(status, headers, exc_info=None):
            headers = _with_vary(headers)
            if allowed:
                headers += [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", EXPOSE_HEADERS)]
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)
