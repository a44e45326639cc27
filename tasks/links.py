"""Signed result links, `<origin>/files/<token>`: the job id (or `<jobId>.svg`) signed with SECRET_KEY.

The API serves and checks them (`api/links.py`: valid for RESULT_URL_TTL_S from signing) and signs them
for `GET /status`, with the request's origin or PUBLIC_URL. The worker service signs them too, for the
`result.image` of webhooks, when it has SECRET_KEY and PUBLIC_URL (it has no request to take an origin
from); without them a webhook names `/result/<jobId>`, which needs the owner's token.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from itsdangerous import URLSafeTimedSerializer

SALT = "inkq.result-url"
SVG_SUFFIX = ".svg"  # a signed link to "<jobId>.svg" names the job's SVG instead of its PNG


def serializer(secret_key: str) -> URLSafeTimedSerializer:
    """The signer of result links; the same key and salt in the API and the worker service."""
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def checked_origin(value: str | None) -> str:
    """PUBLIC_URL without its trailing slash, or "" when unset; ValueError when it is not an origin."""
    value = (value or "").strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"PUBLIC_URL must be like https://api.example.com, not {value!r}")
    return value


def signed_url(secret_key: str, origin: str, name: str) -> str:
    """The result link of `<jobId>` or `<jobId>.svg` under `origin`, signed now."""
    return f"{origin}/files/{serializer(secret_key).dumps(name)}"
