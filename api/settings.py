"""API settings: one object read from the environment (names fixed by API.md).

Tests pass a mapping to `create_app(config)`; it is layered over the process environment,
so nothing is patched. Secrets have no defaults; `SECRET_KEY` falls back to a random key per
process only in development (`INKQ_DEV=1`), since signed result URLs must verify on every API
process of a deployment, and outside it must be at least 32 bytes (`tasks.core.links.checked_secret`).
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Mapping

from tasks.core import links
from tasks.core.queues import QUEUES
from tasks.core.settings import (
    DEFAULTS, ConfigError, LogSettings, StoreSettings, env_bool, env_float, env_int, env_secret, env_str, retry_seconds,
)

from .cors import parse_origins
from .forwarding import allowed_networks, public_url
from .plans import Plans

__all__ = ["AuthSettings", "ConfigError", "ServerSettings", "Settings", "parse_costs"]


def parse_costs(value: str) -> dict[str, int]:
    """Parse `op=n,op=n` into a dict; an operation it does not name costs what the default `CREDIT_COSTS` says."""
    costs = {} if value == DEFAULTS["CREDIT_COSTS"] else parse_costs(str(DEFAULTS["CREDIT_COSTS"]))
    for part in filter(None, (p.strip() for p in value.split(","))):
        op, _, n = part.partition("=")
        op = op.strip()
        if op not in QUEUES or not n.strip().isdigit():
            raise ConfigError(f"CREDIT_COSTS: bad entry {part!r}")
        costs[op] = int(n)
    return costs


@dataclass(frozen=True)
class Settings:
    """Everything the API process reads from its environment."""

    auth: "AuthSettings" = field(repr=False)
    store: StoreSettings = field(repr=False)
    log: LogSettings
    webhook_retry_s: tuple
    redis_url: str
    secret_key: str
    dev: bool
    engine: str
    gemini_configured: bool
    result_ttl_s: int
    failure_ttl_s: int
    result_url_ttl_s: int
    max_upload_bytes: int
    max_pixels: int
    max_inflight_per_user: int
    upload_ttl_s: int
    max_open_uploads_per_user: int
    rate_limit: str
    plans: Plans = field(repr=False)
    read_rate_limit: str
    queue_max_depth: int
    credits_enabled: bool
    credits_initial: int
    credit_costs: dict
    metrics_token: str
    webhook_allow_private: bool
    events_poll_s: float
    events_max_s: float
    redis_max_connections: int
    status_cache_s: float
    access_log: bool
    forwarded_allow: list | None
    max_streams_per_user: int
    public_url: str
    cors_origins: frozenset

    @classmethod
    def load(cls, overrides: Mapping[str, str] | None = None) -> "Settings":
        """Read settings from the environment with `overrides` layered on top; every default is the table's
        (`tasks.core.settings.DEFAULTS`)."""
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (overrides or {}).items()})
        dev = env_bool(env, "INKQ_DEV")
        secret = env.get("SECRET_KEY", "")
        if not secret:
            if not dev:
                raise ConfigError("SECRET_KEY is required (it signs result URLs); set INKQ_DEV=1 for development")
            secret = secrets.token_hex(32)
        try:
            links.checked_secret(secret, dev)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        engine = env_str(env, "ENGINE").lower()
        if engine not in ("auto", "local", "gemini"):
            raise ConfigError(f"ENGINE must be auto, local or gemini, not {engine!r}")
        try:
            cors_origins = parse_origins(env.get("CORS_ORIGINS") or "")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        plans = Plans.load(env_str(env, "PLANS"), env_str(env, "DEFAULT_PLAN"), env_int(env, "MAX_INFLIGHT_PER_USER"),
                           env_str(env, "RATE_LIMIT"))
        return cls(
            auth=AuthSettings.from_env(env),
            store=StoreSettings.from_env(env),
            log=LogSettings.from_env(env),
            webhook_retry_s=retry_seconds(env),
            redis_url=env_str(env, "REDIS_URL"),
            secret_key=secret,
            dev=dev,
            engine=engine,
            gemini_configured=bool(env.get("GEMINI_API_KEY")),
            result_ttl_s=env_int(env, "RESULT_TTL_S"),
            failure_ttl_s=env_int(env, "FAILURE_TTL_S"),
            result_url_ttl_s=env_int(env, "RESULT_URL_TTL_S"),
            max_upload_bytes=int(env_float(env, "MAX_UPLOAD_MB") * 1024 * 1024),
            max_pixels=env_int(env, "MAX_PIXELS"),
            max_inflight_per_user=env_int(env, "MAX_INFLIGHT_PER_USER"),
            upload_ttl_s=max(1, env_int(env, "UPLOAD_TTL_S")),
            max_open_uploads_per_user=max(1, env_int(env, "MAX_OPEN_UPLOADS_PER_USER")),
            rate_limit=env_str(env, "RATE_LIMIT"),
            plans=plans,
            read_rate_limit=env_str(env, "READ_RATE_LIMIT"),
            queue_max_depth=env_int(env, "QUEUE_MAX_DEPTH"),
            credits_enabled=env_bool(env, "CREDITS_ENABLED"),
            credits_initial=env_int(env, "CREDITS_INITIAL"),
            credit_costs=parse_costs(env_str(env, "CREDIT_COSTS")),
            metrics_token=env.get("METRICS_TOKEN", ""),
            webhook_allow_private=env_bool(env, "WEBHOOK_ALLOW_PRIVATE"),
            events_poll_s=env_float(env, "EVENTS_POLL_S"),
            events_max_s=env_float(env, "EVENTS_MAX_S"),
            redis_max_connections=env_int(env, "REDIS_MAX_CONNECTIONS"),
            status_cache_s=env_float(env, "STATUS_CACHE_S"),
            access_log=env.get("ACCESS_LOG", DEFAULTS["ACCESS_LOG"]) != "",  # empty turns it off
            max_streams_per_user=env_int(env, "MAX_STREAMS_PER_USER"),
            forwarded_allow=allowed_networks(env.get("FORWARDED_ALLOW_IPS", "")),
            public_url=public_url(env.get("PUBLIC_URL", "")),
            cors_origins=cors_origins,
        )





@dataclass(frozen=True)
class AuthSettings:
    """Who may call (`api/auth.py`): API_KEYS as given, ADMIN_TOKEN and the JWT settings, blank ones None;
    PLAN_CLAIM, the JWT claim naming the user's plan (`api/plans.py`)."""

    api_keys: str = field(default="", repr=False)
    admin_token: str | None = field(default=None, repr=False)
    jwt_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    plan_claim: str = "plan"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "AuthSettings":
        """Read from a mapping (`Settings.env`)."""
        return cls(api_keys=env.get("API_KEYS") or "", admin_token=env_secret(env, "ADMIN_TOKEN"),
                   jwt_secret=env_secret(env, "JWT_SECRET"), jwks_url=env_secret(env, "JWT_JWKS_URL"),
                   issuer=env_secret(env, "JWT_ISSUER"), audience=env_secret(env, "JWT_AUDIENCE"),
                   plan_claim=env_str(env, "PLAN_CLAIM").strip())


@dataclass(frozen=True)
class ServerSettings:
    """How `inkq-api` serves (`api/cli.py`, `api/server.py`): where, how many gunicorn processes and
    connections, its timeout, the proxies it trusts, and the deadlines for a request's head and body."""

    host: str
    port: int
    processes: int
    worker_connections: int
    timeout_s: int
    forwarded_allow_ips: str
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServerSettings":
        """Read from a mapping (the process environment by default)."""
        env = os.environ if env is None else env
        return cls(host=env_str(env, "HOST"), port=env_int(env, "PORT"), processes=env_int(env, "WEB_CONCURRENCY"),
                   worker_connections=env_int(env, "GUNICORN_WORKER_CONNECTIONS"),
                   timeout_s=env_int(env, "GUNICORN_TIMEOUT"), forwarded_allow_ips=env_str(env, "FORWARDED_ALLOW_IPS"),
                   header_timeout_s=env_float(env, "REQUEST_HEADER_TIMEOUT_S"),
                   body_timeout_s=env_float(env, "REQUEST_BODY_TIMEOUT_S"))
