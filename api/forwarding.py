"""Which requests may say where they came from, and the origin of the URLs the API hands out.

`X-Forwarded-For`, `-Proto` and `-Host` are honoured only on connections from the proxies named in
FORWARDED_ALLOW_IPS (addresses or networks, comma-separated; `*` for any peer; default
`127.0.0.1,::1`, gunicorn's); from any other peer they are removed before the app sees them.
gunicorn 27 applies its own `forwarded_allow_ips` only in its own HTTP parser, which the
`gevent_pywsgi` worker does not use (gevent parses the request), so the check is made here, in front
of werkzeug's ProxyFix (one hop).

Signed result URLs are absolute, so that they work in an `<img>` on another origin and in the `inkq`
command line. Their origin is PUBLIC_URL when it is set (`https://api.example.com`); then no request
header has any say in it. Unset, it is the request's own scheme and `Host` (as forwarded by a trusted
proxy): a client can only change the URLs in its own answers. Production deployments set PUBLIC_URL.
"""
from __future__ import annotations

import ipaddress

from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.sansio.utils import get_current_url
from werkzeug.wsgi import get_host

from tasks.core import links
from tasks.core.settings import DEFAULTS, ConfigError

_FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX")


def allowed_networks(value: str) -> list | None:
    """FORWARDED_ALLOW_IPS as networks; None means every peer (`*`)."""
    parts = [part.strip() for part in (value or str(DEFAULTS["FORWARDED_ALLOW_IPS"])).split(",") if part.strip()]
    if "*" in parts:
        return None
    try:
        return [ipaddress.ip_network(part, strict=False) for part in parts]
    except ValueError as exc:
        raise ConfigError(f"FORWARDED_ALLOW_IPS: {exc}") from None


def public_url(value: str) -> str:
    """PUBLIC_URL checked and without its trailing slash; empty when unset."""
    try:
        return links.checked_origin(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def origin(environ, configured: str) -> str:
    """The origin of the URLs handed out in answer to this request."""
    return configured or get_current_url(environ["wsgi.url_scheme"], get_host(environ)).rstrip("/")


class TrustedProxies:
    """WSGI middleware: ProxyFix for peers in FORWARDED_ALLOW_IPS, forwarded headers dropped for the rest."""

    def __init__(self, wsgi_app, networks: list | None):
        self.wsgi_app = wsgi_app
        self.fixed = ProxyFix(wsgi_app, x_for=1, x_proto=1, x_host=1)
        self.networks = networks

    def trusted(self, peer: str | None) -> bool:
        """Whether the connection's peer is a proxy whose forwarded headers count."""
        if self.networks is None:
            return True
        try:
            address = ipaddress.ip_address((peer or "").split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __call__(self, environ, start_response):
        if self.trusted(environ.get("REMOTE_ADDR")):
            return self.fixed(environ, start_response)
        for key in _FORWARDED:
            environ.pop(key, None)
        return self.wsgi_app(environ, start_response)
