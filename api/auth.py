"""Who is calling: the admin token, API keys and Bearer JWTs, turned into a ``Principal``.

Framework-free: the web layer calls ``Authenticator.authenticate(<Authorization header>)`` and
maps ``AuthError`` to 401 ``unauthenticated``. ``AuthUnavailable`` (a subclass, raised when the
JWKS cannot be fetched) is not the caller's fault and is better answered 503 with ``Retry-After``.

Design decisions:
- Checked in a fixed order: ADMIN_TOKEN, then API_KEYS, then JWTs. Admin rights come only from
  ADMIN_TOKEN; no JWT claim (``sub``, roles, ...) ever grants them.
- Secrets are compared in constant time: the SHA-256 of the presented token is compared with
  ``hmac.compare_digest`` against the digest of every configured key, with no early exit, so
  neither the matching key's position nor its length leaks through timing.
- The token's ``alg`` header only selects a verifier; the allowed algorithms are fixed by the key
  source. JWT_SECRET verifies HS256 and nothing else. A JWKS key verifies only with its own
  algorithm (its JWK ``alg``, else RS256 for RSA and the curve's ESxxx for EC), and only RSA
  (RS256/RS384/RS512) and EC (ES256/ES384/ES512) keys are trusted; ``oct`` keys published in a
  JWKS are ignored. So ``alg: none``, HS256 signed with an RSA public key, and RS/ES mix-ups fail.
- Claims: ``exp`` and ``sub`` are required; ``exp``, ``nbf`` and ``iat`` are checked with
  ``leeway_s`` (30 s) of clock skew; ``iss`` and ``aud`` only when JWT_ISSUER / JWT_AUDIENCE are
  set (a token carrying ``aud`` is accepted when JWT_AUDIENCE is unset). ``sub`` must be a
  non-blank string of at most 255 characters; it is the user id.
- JWKS: ``PyJWKClient`` with its JWK-set cache (5 minutes). A ``kid`` missing from the cached set
  triggers a refetch at most once per ``jwks_refresh_interval_s`` (30 s), counted from the last
  such refetch rather than from routine fetches, so a rotated key is picked up at once while a
  flood of random ``kid`` values costs one request per interval. After a failed fetch the URL is
  left alone for min(5 s, interval); requests needing it get ``AuthUnavailable`` meanwhile.
- JWT_JWKS_URL must be https; plain http is accepted only for loopback hosts (tests, local dev).
- Error messages are fixed strings that never contain the presented credential or a secret.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

import jwt

log = logging.getLogger(__name__)

MAX_HEADER_CHARS = 8192
MAX_SUB_CHARS = 255
ADMIN_USER_ID = "admin"
METHODS = ("api_key", "jwt", "admin")

HMAC_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = {
    "RSA": frozenset({"RS256", "RS384", "RS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
}
_ASYMMETRIC_ALGORITHMS = frozenset().union(*JWKS_ALGORITHMS.values())

JWKS_CACHE_LIFESPAN_S = 300.0
JWKS_FAILURE_BACKOFF_S = 5.0
JWKS_USER_AGENT = "inkq-auth/1"  # urllib's default agent is blocked by some CDNs

_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class Principal:
    """Who made a request: the user id jobs and credits belong to, and how it was proven."""

    user_id: str
    is_admin: bool = False
    method: str = "api_key"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown authentication method {self.method!r}")


class AuthError(Exception):
    """Credentials missing or refused; ``message`` is safe to show to the client."""

    def __init__(self, message: str = "invalid credentials") -> None:
        super().__init__(message)
        self.message = message


class AuthUnavailable(AuthError):
    """The JWKS could not be fetched: retry later (503), not the caller's fault (401)."""

    def __init__(self, retry_after_s: int = int(JWKS_FAILURE_BACKOFF_S)) -> None:
        super().__init__("authentication service unavailable")
        self.retry_after_s = retry_after_s


def parse_api_keys(value: str | None) -> dict[str, str]:
    """Parse API_KEYS (``token:userId,token:userId``) into ``{token: userId}``."""
    keys: dict[str, str] = {}
    for number, entry in enumerate((value or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        token, sep, user_id = entry.partition(":")
        token, user_id = token.strip(), user_id.strip()
        if not sep or not token or not user_id:
            raise ValueError(f"API_KEYS entry {number} is malformed: expected token:userId")
        if not _TOKEN_TEXT.fullmatch(token):
            raise ValueError(f"API_KEYS entry {number}: the token must be printable ASCII without spaces")
        if keys.get(token, user_id) != user_id:
            raise ValueError(f"API_KEYS entry {number}: the same token is given to two users")
        keys[token] = user_id
    return keys


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_jwks_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    raise ValueError("JWT_JWKS_URL must be an https:// URL (http:// only for localhost)")


class _JWKSKeys(jwt.PyJWKClient):
    """PyJWKClient with a throttled refetch for unknown kids and a backoff after failed fetches."""

    def __init__(self, url: str, timeout_s: float, refresh_interval_s: float) -> None:
        super().__init__(
            url,
            cache_jwk_set=True,
            lifespan=JWKS_CACHE_LIFESPAN_S,
            timeout=timeout_s,
            headers={"User-Agent": JWKS_USER_AGENT},
            cooldown_duration=0,  # our own throttle below; PyJWT's would also count routine fetches
        )
        self.refresh_interval_s = refresh_interval_s
        self.failure_backoff_s = min(JWKS_FAILURE_BACKOFF_S, refresh_interval_s)
        self._lock = threading.Lock()
        self._last_refresh: float | None = None
        self._retry_at = 0.0

    def fetch_data(self):
        """Fetch the JWK set, unless a recent failure says to wait."""
        if time.monotonic() < self._retry_at:
            raise jwt.PyJWKClientConnectionError("JWKS fetch backing off after a failure")
        try:
            return super().fetch_data()
        except Exception as exc:
            self._retry_at = time.monotonic() + self.failure_backoff_s
            log.warning("JWKS fetch from %s failed: %s", self.uri, exc)
            raise

    def retry_after_s(self) -> int:
        """Whole seconds until the next fetch attempt is allowed (at least 1)."""
        return max(1, math.ceil(self._retry_at - time.monotonic()))

    def key_for(self, kid: str) -> jwt.PyJWK | None:
        """The signing key for ``kid``, refetching the JWKS (throttled) when it is unknown."""
        with self._lock:
            key = self.match_kid(self.get_signing_keys(), kid)
            if key is None and self._refresh_allowed():
                self._last_refresh = time.monotonic()
                key = self.match_kid(self.get_signing_keys(refresh=True), kid)
            return key

    def _refresh_allowed(self) -> bool:
        return self._last_refresh is None or time.monotonic() - self._last_refresh >= self.refresh_interval_s


class Authenticator:
    """Turns an ``Authorization`` header into a ``Principal``, or raises ``AuthError``."""

    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | None = None,
        admin_token: str | None = None,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: int = 30,
        jwks_timeout_s: float = 5,
        jwks_refresh_interval_s: float = 30,
    ) -> None:
        api_keys = dict(api_keys or {})
        for token, user_id in api_keys.items():
            if not isinstance(token, str) or not _TOKEN_TEXT.fullmatch(token):
                raise ValueError("API keys must be printable ASCII without spaces")
            if not isinstance(user_id, str) or not user_id.strip():
                raise ValueError("every API key needs a user id")
        if admin_token is not None and not _TOKEN_TEXT.fullmatch(admin_token):
            raise ValueError("ADMIN_TOKEN must be printable ASCII without spaces")
        if admin_token is not None and admin_token in api_keys:
            raise ValueError("ADMIN_TOKEN must not also be an API key")
        if jwks_url:
            _check_jwks_url(jwks_url)
        if jwt_secret and len(jwt_secret.encode("utf-8")) < 32:
            log.warning("JWT_SECRET is shorter than 32 bytes; HS256 secrets should be longer")

        self._admin_digest = _digest(admin_token) if admin_token is not None else None
        self._api_keys = [(_digest(token), user_id) for token, user_id in api_keys.items()]
        self._jwt_secret = jwt_secret or None
        self._jwks = _JWKSKeys(jwks_url, jwks_timeout_s, jwks_refresh_interval_s) if jwks_url else None
        self.jwks_url = jwks_url or None
        self.issuer = issuer or None
        self.audience = audience or None
        self.leeway_s = leeway_s
        self._decode_options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Authenticator":
        """Build from API_KEYS, ADMIN_TOKEN, JWT_SECRET, JWT_JWKS_URL, JWT_ISSUER, JWT_AUDIENCE."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return (env.get(name) or "").strip() or None

        return cls(
            api_keys=parse_api_keys(env.get("API_KEYS")),
            admin_token=get("ADMIN_TOKEN"),
            jwt_secret=get("JWT_SECRET"),
            jwks_url=get("JWT_JWKS_URL"),
            issuer=get("JWT_ISSUER"),
            audience=get("JWT_AUDIENCE"),
        )

    @property
    def configured(self) -> bool:
        """Whether any authentication method is set up."""
        return bool(self._admin_digest or self._api_keys or self._jwt_secret or self._jwks)

    def authenticate(self, authorization: str | None, allow_basic: bool = False) -> Principal:
        """The Principal for an Authorization header value; raises AuthError when refused."""
        scheme, credentials = _split_authorization(authorization)
        if scheme == "bearer":
            return self._bearer(credentials)
        if scheme == "basic" and allow_basic:
            return self._basic(credentials)
        raise AuthError("unsupported authorization scheme")

    def _is_admin_digest(self, digest: bytes) -> bool:
        return self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest)

    def _bearer(self, token: str) -> Principal:
        digest, found = _digest(token), None
        if self._is_admin_digest(digest):
            return Principal(ADMIN_USER_ID, True, "admin")
        for key_digest, user_id in self._api_keys:
            if hmac.compare_digest(digest, key_digest):
                found = user_id
        if found is not None:
            return Principal(found, False, "api_key")
        if (self._jwt_secret or self._jwks) and _JWT_SHAPE.fullmatch(token):
            return Principal(self._verify_jwt(token), False, "jwt")
        raise AuthError("invalid credentials")

    def _basic(self, credentials: str) -> Principal:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except ValueError:
            raise AuthError("malformed authorization header") from None
        _user, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError("malformed authorization header")
        if self._is_admin_digest(_digest(password)):
            return Principal(ADMIN_USER_ID, True, "admin")
        raise AuthError("invalid credentials")

    def _verify_jwt(self, token: str) -> str:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("invalid token") from None
        alg = header.get("alg")
        if alg in HMAC_ALGORITHMS and self._jwt_secret:
            key, algorithms = self._jwt_secret, list(HMAC_ALGORITHMS)
        elif alg in _ASYMMETRIC_ALGORITHMS and self._jwks:
            key = self._jwks_key(header.get("kid"), alg)
            algorithms = [key.algorithm_name]
        else:
            raise AuthError("invalid token")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options=self._decode_options,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid token issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid token audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token has no {exc.claim} claim") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("invalid token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUB_CHARS:
            raise AuthError("invalid token subject")
        return sub

    def _jwks_key(self, kid: object, alg: str) -> jwt.PyJWK:
        if not isinstance(kid, str) or not kid:
            raise AuthError("invalid token")
        try:
            key = self._jwks.key_for(kid)
        except (jwt.PyJWTError, ValueError, OSError):
            raise AuthUnavailable(self._jwks.retry_after_s()) from None
        if key is None or key.algorithm_name != alg or alg not in JWKS_ALGORITHMS.get(key.key_type, ()):
            raise AuthError("invalid token")
        return key


def _split_authorization(value: str | None) -> tuple[str, str]:
    """``(scheme in lower case, credentials)`` from a header value, or AuthError for junk."""
    if value is None or not value.strip():
        raise AuthError("missing credentials")
    if len(value) > MAX_HEADER_CHARS:
        raise AuthError("authorization header too long")
    parts = value.split()
    if len(parts) == 1 and parts[0].lower() in ("bearer", "basic"):
        raise AuthError("missing credentials")
    if len(parts) != 2 or not _TOKEN_TEXT.fullmatch(parts[1]):
        raise AuthError("malformed authorization header")
    return parts[0].lower(), parts[1]
