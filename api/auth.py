"""Who is calling: the admin token, API keys and Bearer JWTs, turned into a ``Principal``.

Framework-free: the web layer calls ``Authenticator.authenticate(<Authorization header>)`` and
maps ``AuthError`` to 401 ``unauthenticated``. ``AuthUnavailable`` (a subclass, raised when the
JWKS cannot be fetched) is not the caller's fault and is better answered 503 with ``Retry-After``.

Design decisions:
- Checked in a fixed order: ADMIN_TOKEN, then API_KEYS, then JWTs. Admin rights come only from
  ADMIN_TOKEN; no JWT claim (``sub``, roles, ...) ever grants them.
- Secrets are never compared as given: the presented token is hashed (SHA-256) first. ADMIN_TOKEN's
  digest is compared with ``hmac.compare_digest``; API keys are looked up by their digest in a dict,
  so the cost does not grow with the number of keys (a constant-time loop over every key's digest
  took 14% of the API's CPU with 4,000 keys). Any timing the lookup shows depends only on
  the presented token's digest, which a caller cannot steer towards a key's without a SHA-256
  preimage; nothing about a key's length or position shows.
- The token's ``alg`` header only selects a verifier; the allowed algorithms are fixed by the key
  source. JWT_SECRET verifies HS256 and nothing else. A JWKS key verifies only with its own
  algorithm (its JWK ``alg``, else RS256 for RSA and the curve's ESxxx for EC), and only RSA
  (RS256/RS384/RS512) and EC (ES256/ES384/ES512) keys are trusted; ``oct`` keys published in a
  JWKS are ignored. So ``alg: none``, HS256 signed with an RSA public key, and RS/ES mix-ups fail.
- Claims: ``exp`` and ``sub`` are required; ``exp``, ``nbf`` and ``iat`` are checked with
  ``leeway_s`` (30 s) of clock skew; ``iss`` and ``aud`` only when JWT_ISSUER / JWT_AUDIENCE are
  set (a token carrying ``aud`` is accepted when JWT_AUDIENCE is unset).
- User ids: a JWT's ``sub`` and every API key's user id are 1-255 characters of
  ``A-Za-z0-9._@|+-`` not starting with ``@`` (Clerk's ``user_2a…``, Auth0's ``google-oauth2|1…``
  and e-mail addresses fit). Anything else is refused (401 for a token, a ConfigError naming the
  entry for API_KEYS), so no user id carries markup into a log line or an operator's page
  (rq-dashboard prints job descriptions raw), nor a ``:`` into a Redis key.
- One namespace per issuer: a JWT user is ``jwt:<sub>``; an API-key user is its configured id,
  which cannot contain ``:``. So a JWT whose ``sub`` equals an API-key user's id is another user,
  and the id an admin uses in ``POST /admin/credits/<userId>`` is the one jobs are stored under.
  ``@`` starts only the admin's own id.
- JWKS: fetched with ``PyJWKClient`` and kept for 5 minutes, then refreshed in the background
  while the cached keys go on verifying (see ``_JWKSKeys``: no login with a cached key ever waits
  for the endpoint, and concurrent fetches collapse into one, bounded by the timeout). A ``kid``
  missing from the cached set triggers a refetch at most once per ``jwks_refresh_interval_s``
  (30 s), counted from the last such refetch rather than from routine fetches, so a rotated key is
  picked up at once while a flood of random ``kid`` values costs one request per interval. After a
  failed fetch the URL is left alone for min(5 s, interval); requests needing a fetch get
  ``AuthUnavailable`` meanwhile, and cached keys stay in use until a fetch succeeds.
- Plans (`api/plans.py`): an API key's plan is the third field of its ``API_KEYS`` entry
  (``token:userId:plan``); a JWT's is its claim ``PLAN_CLAIM``, read only after its signature and
  claims are verified. A plan name is 1-64 characters of ``A-Za-z0-9._-``; ``plan_of`` turns what a
  credential names (None when it names none) into the plan in force (``DEFAULT_PLAN`` for
  anything unknown). Nothing in a request but its credential names a plan.
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
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping
from urllib.parse import urlsplit

import jwt

from .plans import NAME as PLAN_NAME
from .plans import NAME_RULE as PLAN_NAME_RULE

if TYPE_CHECKING:
    from .plans import Plans
    from .settings import AuthSettings

log = logging.getLogger(__name__)

MAX_HEADER_CHARS = 8192
ADMIN_USER_ID = "admin"
JWT_USER_PREFIX = "jwt:"
USER_ID_TEXT = re.compile(r"[A-Za-z0-9._|+-][A-Za-z0-9._@|+-]{0,254}")
USER_ID_RULE = "1-255 characters of A-Za-z0-9._@|+- not starting with @"
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
    """Who made a request: the user id jobs and credits belong to, how it was proven, and the user's plan
    (`api/plans.py`; None: the default plan)."""

    user_id: str
    is_admin: bool = False
    method: str = "api_key"
    plan: str | None = None

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


def valid_user_id(user_id: str) -> bool:
    """Whether a user id is one authentication can produce: an API-key id or ``jwt:<sub>``."""
    return bool(USER_ID_TEXT.fullmatch(user_id.removeprefix(JWT_USER_PREFIX)))


def parse_api_keys(value: str | None, plans: frozenset[str] | None = None) -> dict[str, tuple[str, str | None]]:
    """Parse API_KEYS (``token:userId[:plan],...``) into ``{token: (userId, plan or None)}``. With ``plans``
    (the names PLANS defines), a plan it does not define is refused."""
    keys: dict[str, tuple[str, str | None]] = {}
    for number, entry in enumerate((value or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        token, sep, owner = entry.partition(":")
        user_id, has_plan, plan = owner.partition(":")
        token, user_id, plan = token.strip(), user_id.strip(), plan.strip()
        if not sep or not token or not user_id or (has_plan and not plan):
            raise ValueError(f"API_KEYS entry {number} is malformed: expected token:userId or token:userId:plan")
        if not USER_ID_TEXT.fullmatch(user_id):
            raise ValueError(f"API_KEYS entry {number}: the user id must be {USER_ID_RULE}")
        if not _TOKEN_TEXT.fullmatch(token):
            raise ValueError(f"API_KEYS entry {number}: the token must be printable ASCII without spaces")
        if has_plan and not PLAN_NAME.fullmatch(plan):
            raise ValueError(f"API_KEYS entry {number}: the plan must be {PLAN_NAME_RULE}")
        if has_plan and plans is not None and plan not in plans:
            raise ValueError(f"API_KEYS entry {number}: plan {plan!r} is not one of PLANS ({', '.join(sorted(plans))})")
        found = (user_id, plan or None)
        if keys.get(token, found) != found:
            raise ValueError(f"API_KEYS entry {number}: the same token is given to two users or plans")
        keys[token] = found
    return keys


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def same_secret(given: str, expected: str) -> bool:
    """Whether two secrets are equal, in time that depends on neither's value nor length."""
    return hmac.compare_digest(_digest(given), _digest(expected))


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


class _Flight:
    """One JWKS fetch in progress: the callers waiting for it share its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Exception | None = None


class _JWKSKeys(jwt.PyJWKClient):
    """The JWKS's signing keys by ``kid``: served from memory, refreshed by one fetch at a time.

    PyJWKClient (PyJWT 2.15) is used for the fetch only (URL, timeout, headers, no redirects) and its
    own caches are off: it fetches in the caller's thread, so a serialised caller waited for a slow
    endpoint and every login behind it waited too. Here a fetch runs in its own thread; a lock is
    held only to read or swap state, never across I/O. Callers that need the fetch (nothing cached
    yet, or an unknown ``kid`` when the throttle allows) wait for the one in flight, at most
    ``timeout_s`` + 1 s; a caller whose key is cached never waits: a set older than the lifespan is
    served while a refresh runs behind it, and it stays in use if that refresh fails.
    """

    def __init__(self, url: str, timeout_s: float, refresh_interval_s: float,
                 lifespan_s: float = JWKS_CACHE_LIFESPAN_S) -> None:
        super().__init__(url, cache_jwk_set=False, cache_keys=False, timeout=timeout_s,
                         headers={"User-Agent": JWKS_USER_AGENT})
        self.timeout_s = timeout_s
        self.lifespan_s = lifespan_s
        self.refresh_interval_s = refresh_interval_s
        self.failure_backoff_s = min(JWKS_FAILURE_BACKOFF_S, refresh_interval_s)
        self._guard = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._flight: _Flight | None = None
        self._last_refresh: float | None = None
        self._retry_at = 0.0

    def retry_after_s(self) -> int:
        """Whole seconds until the next fetch attempt is allowed (at least 1)."""
        return max(1, math.ceil(self._retry_at - time.monotonic()))

    def key_for(self, kid: str) -> jwt.PyJWK | None:
        """The signing key for ``kid``, refetching the JWKS (throttled) when it is unknown."""
        if self._fetched_at is None:
            self._refresh(wait=True)
            return self._keys.get(kid)
        key = self._keys.get(kid)
        if key is not None:
            if time.monotonic() - self._fetched_at >= self.lifespan_s:
                self._refresh(wait=False)
            return key
        with self._guard:
            allowed = self._last_refresh is None or time.monotonic() - self._last_refresh >= self.refresh_interval_s
            if allowed:
                self._last_refresh = time.monotonic()
        if allowed:
            self._refresh(wait=True)
            return self._keys.get(kid)
        return None

    def _refresh(self, wait: bool) -> None:
        with self._guard:
            flight = self._flight
            if flight is None:
                if time.monotonic() < self._retry_at:
                    if wait:
                        raise jwt.PyJWKClientConnectionError("JWKS fetch backing off after a failure")
                    return
                flight = self._flight = _Flight()
                threading.Thread(target=self._fetch, args=(flight,), name="jwks-fetch", daemon=True).start()
        if not wait:
            return
        if not flight.done.wait(self.timeout_s + 1):
            raise jwt.PyJWKClientConnectionError("JWKS fetch is taking too long")
        if flight.error is not None:
            raise flight.error

    def _fetch(self, flight: _Flight) -> None:
        try:
            jwk_set = jwt.PyJWKSet.from_dict(self.fetch_data())
            keys = {key.key_id: key for key in self._get_signing_keys_from_jwk_set(jwk_set)}
        except Exception as exc:
            flight.error = exc
            with self._guard:
                self._retry_at = time.monotonic() + self.failure_backoff_s
            log.warning("JWKS fetch from %s failed: %s", self.uri, exc)
        else:
            with self._guard:
                self._keys, self._fetched_at = keys, time.monotonic()
        finally:
            with self._guard:
                self._flight = None
            flight.done.set()


class Authenticator:
    """Turns an ``Authorization`` header into a ``Principal``, or raises ``AuthError``."""

    def __init__(
        self,
        *,
        api_keys: Mapping[str, str | tuple[str, str | None]] | None = None,
        admin_token: str | None = None,
        jwt_secret: str | None = None,
        jwks_url: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: int = 30,
        jwks_timeout_s: float = 5,
        jwks_refresh_interval_s: float = 30,
        jwks_cache_s: float = JWKS_CACHE_LIFESPAN_S,
        plan_claim: str = "plan",
        plan_of: Callable[[object], str | None] | None = None,
    ) -> None:
        owners = {token: owner if isinstance(owner, tuple) else (owner, None) for token, owner in (api_keys or {}).items()}
        api_keys = {token: owner[0] for token, owner in owners.items()}
        for token, user_id in api_keys.items():
            if not isinstance(token, str) or not _TOKEN_TEXT.fullmatch(token):
                raise ValueError("API keys must be printable ASCII without spaces")
            if not isinstance(user_id, str) or not USER_ID_TEXT.fullmatch(user_id):
                raise ValueError(f"every API key needs a user id of {USER_ID_RULE}")
        if admin_token is not None and not _TOKEN_TEXT.fullmatch(admin_token):
            raise ValueError("ADMIN_TOKEN must be printable ASCII without spaces")
        if admin_token is not None and admin_token in api_keys:
            raise ValueError("ADMIN_TOKEN must not also be an API key")
        if jwks_url:
            _check_jwks_url(jwks_url)
        if jwt_secret and len(jwt_secret.encode("utf-8")) < 32:
            log.warning("JWT_SECRET is shorter than 32 bytes; HS256 secrets should be longer")

        self._admin_digest = _digest(admin_token) if admin_token is not None else None
        self.plan_claim = plan_claim
        self._plan_of = plan_of or (lambda claimed: claimed if isinstance(claimed, str) and claimed else None)
        self._api_keys = {_digest(token): (user_id, self._plan_of(plan)) for token, (user_id, plan) in owners.items()}
        self._jwt_secret = jwt_secret or None
        self._jwks = _JWKSKeys(jwks_url, jwks_timeout_s, jwks_refresh_interval_s, jwks_cache_s) if jwks_url else None
        self.jwks_url = jwks_url or None
        self.issuer = issuer or None
        self.audience = audience or None
        self.leeway_s = leeway_s
        self._decode_options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}

    @classmethod
    def from_settings(cls, settings: "AuthSettings", plans: "Plans | None" = None) -> "Authenticator":
        """Build from the API's settings: API_KEYS, ADMIN_TOKEN, JWT_SECRET, JWT_JWKS_URL, JWT_ISSUER, JWT_AUDIENCE,
        PLAN_CLAIM, and the plans in force (`api/plans.py`)."""
        return cls(
            api_keys=parse_api_keys(settings.api_keys, plans.names if plans is not None else None),
            plan_claim=settings.plan_claim,
            plan_of=plans.name_of if plans is not None else None,
            admin_token=settings.admin_token,
            jwt_secret=settings.jwt_secret,
            jwks_url=settings.jwks_url,
            issuer=settings.issuer,
            audience=settings.audience,
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
        digest = _digest(token)
        if self._is_admin_digest(digest):
            return Principal(ADMIN_USER_ID, True, "admin")
        found = self._api_keys.get(digest)
        if found is not None:
            return Principal(found[0], False, "api_key", found[1])
        if (self._jwt_secret or self._jwks) and _JWT_SHAPE.fullmatch(token):
            sub, plan = self._verify_jwt(token)
            return Principal(JWT_USER_PREFIX + sub, False, "jwt", plan)
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

    def _verify_jwt(self, token: str) -> tuple[str, str | None]:
        """The verified token's ``sub`` and the plan its ``PLAN_CLAIM`` names (through ``plan_of``)."""
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
        if not isinstance(sub, str) or not USER_ID_TEXT.fullmatch(sub):
            raise AuthError("invalid token subject")
        claimed = claims.get(self.plan_claim)
        if claimed is not None and not (isinstance(claimed, str) and PLAN_NAME.fullmatch(claimed)):
            claimed = ""  # present but not a plan name: the default plan (plan_of logs it once)
        return sub, self._plan_of(claimed)

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
