"""Signed result links, `<origin>/files/<token>`: the job id (or `<jobId>.svg`) signed with SECRET_KEY.

The API serves and checks them (`api/links.py`: valid for RESULT_URL_TTL_S from signing) and signs them
for `GET /status`, with the request's origin or PUBLIC_URL. The worker service signs them too, for the
`result.image` of webhooks, when it has SECRET_KEY and PUBLIC_URL (it has no request to take an origin
from); without them a webhook names `/result/<jobId>`, which needs the owner's token.

Both services check the two settings as they start and refuse to start (exit status 2) on a bad one:
a PUBLIC_URL that is not exactly an origin (a scheme, a host and an optional port: a path
would be dropped or doubled in every link, credentials would be handed out in them, and a port out of
range makes no link that works), and, outside INKQ_DEV, a SECRET_KEY under `MIN_SECRET_BYTES`: a
short key was recovered offline from one result link, and it then signed `/files/` links to any job.
"""
from __future__ import annotations

import ipaddress
import re

from itsdangerous import URLSafeTimedSerializer

SALT = "inkq.result-url"
SVG_SUFFIX = ".svg"  # a signed link to "<jobId>.svg" names the job's SVG instead of its PNG


def serializer(secret_key: str) -> URLSafeTimedSerializer:
    """The signer of result links; the same key and salt in the API and the worker service."""
    return URLSafeTimedSerializer(secret_key, salt=SALT)


MIN_SECRET_BYTES = 32
_ORIGIN = re.compile(r"(https?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::([1-9][0-9]{0,4}))?/?", re.IGNORECASE)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def checked_origin(value: str | None) -> str:
    """PUBLIC_URL as `scheme://host[:port]` (lower case, no trailing slash), or "" when unset; ValueError
    when it is anything but an origin."""
    value = (value or "").strip()
    if not value:
        return ""
    match = _ORIGIN.fullmatch(value)
    scheme, host, port = match.groups() if match else ("", "", None)
    if not match or not _valid_host(host) or (port is not None and int(port) > 65535):
        shown = re.sub(r"//[^/?#]*@", "//…@", value)  # credentials are not logged
        raise ValueError("PUBLIC_URL must be like https://api.example.com: http or https, a host and an optional "
                         f"port (1-65535), with no path, credentials, query or fragment; not {shown!r}")
    return f"{scheme.lower()}://{host.lower()}" + (f":{port}" if port else "")


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


def checked_secret(value: str | None, dev: bool) -> str:
    """SECRET_KEY as given; ValueError when it is set and shorter than MIN_SECRET_BYTES outside INKQ_DEV."""
    value = value or ""
    size = len(value.encode())
    if value and size < MIN_SECRET_BYTES and not dev:
        raise ValueError(f"SECRET_KEY must be at least {MIN_SECRET_BYTES} random bytes (it signs result links, and a "
                         f"short key can be found from one of them); it has {size}. Make one with "
                         "`python -c 'import secrets; print(secrets.token_hex(32))'`; INKQ_DEV=1 allows a short key")
    return value


def signed_url(secret_key: str, origin: str, name: str) -> str:
    """The result link of `<jobId>` or `<jobId>.svg` under `origin`, signed now."""
    return f"{origin}/files/{serializer(secret_key).dumps(name)}"
