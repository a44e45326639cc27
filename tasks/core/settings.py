"""Every setting's default, the readers that apply them, and the worker service's settings (names fixed by API.md).

Each service reads its environment once, as it starts: the API into `api.settings.Settings`, the worker
service into `WorkerSettings`, which it builds in its supervisor (`tasks/runtime/cli.py`) and passes down. The
job functions rq runs get it from `current()`, set once per process (`use`) and inherited by the forked
processes; a process that never set it (a test calling a job function in-process) reads it from its
environment on first use. No other module reads the environment; `api/client.py`, the `inkq` command
line, reads its own `INKQ_URL` and `INKQ_TOKEN`.

Every default is written once, in `DEFAULTS`: a reader given no default takes the variable's default
from there, so the API and the worker service cannot disagree about one. A variable missing from the
table has no default (a secret, an address with none): it is empty when unset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from .queues import WORKER_QUEUES

class ConfigError(ValueError):
    """The configuration cannot run the service (both services exit with status 2 on it)."""


DEFAULTS: dict[str, object] = {
    # both services
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "INKQ_DEV": False,
    "ENGINE": "auto",
    "GEMINI_IMAGE_MODEL": "gemini-3.1-flash-image",
    "GEMINI_TIMEOUT_S": 60.0,
    "RESULT_TTL_S": 86400,
    "FAILURE_TTL_S": 604800,
    "RESULT_URL_TTL_S": 3600,
    "MAX_PIXELS": 40_000_000,
    "WEBHOOK_ALLOW_PRIVATE": False,
    "WEBHOOK_RETRY_S": "5,20,60,180,420",
    "BLOB_STORE": "redis",
    "S3_REGION": "us-east-1",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    # the worker service: jobs in flight per queue, per worker service
    "CONCURRENCY_STENCIL": 5,
    "CONCURRENCY_ENHANCE": 3,
    "CONCURRENCY_IA_GEN": 3,
    "CONCURRENCY_COLOR_MATCH": 10,
    "CONCURRENCY_WEBHOOKS": 2,
    "GEMINI_MAX_RPM": 0,  # 0: no configured budget (tasks/quota.py)
    "INKQ_GEMINI_WINDOW_S": 60,
    "WORKER_NICE": 0,
    "INKQ_DEQUEUE_WAIT_S": 5,
    # the API
    "HOST": "0.0.0.0",
    "PORT": 8000,
    "WEB_CONCURRENCY": 2,
    "GUNICORN_WORKER_CONNECTIONS": 5000,
    "GUNICORN_TIMEOUT": 60,
    "REQUEST_HEADER_TIMEOUT_S": 10.0,
    "REQUEST_BODY_TIMEOUT_S": 60.0,
    "FORWARDED_ALLOW_IPS": "127.0.0.1,::1",
    "ACCESS_LOG": "-",
    "MAX_UPLOAD_MB": 10.0,
    "MAX_INFLIGHT_PER_USER": 10,
    "UPLOAD_TTL_S": 3600,
    "MAX_OPEN_UPLOADS_PER_USER": 20,
    "RATE_LIMIT": "120/minute",
    "READ_RATE_LIMIT": "3000/minute",
    "PLANS": "",  # none: every user on DEFAULT_PLAN with the global limits (api/plans.py)
    "DEFAULT_PLAN": "free",
    "PLAN_CLAIM": "plan",
    "QUEUE_MAX_DEPTH": 1000,
    "CREDITS_ENABLED": False,
    "CREDITS_INITIAL": 0,
    "CREDIT_COSTS": "stencil=1,enhance=1,ia-gen=2,color-match=1",
    "EVENTS_POLL_S": 10.0,
    "EVENTS_MAX_S": 600.0,
    "REDIS_MAX_CONNECTIONS": 64,
    "STATUS_CACHE_S": 10.0,
    "MAX_STREAMS_PER_USER": 20,
}
DEFAULT_GEMINI_MODEL = DEFAULTS["GEMINI_IMAGE_MODEL"]


def cores() -> int:
    """INKQ_CPU_PROCESSES's default: the box's cores."""
    return os.cpu_count() or 1


def _default(name: str, default):
    return DEFAULTS[name] if default is None else default


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    """A string from the environment, or the default (the table's, else empty) when unset or empty."""
    return env.get(name) or (DEFAULTS.get(name, "") if default is None else default)


def env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    """An integer from the environment, or the default (the table's unless given) when unset or empty."""
    raw = env.get(name, "")
    return int(raw) if str(raw).strip() else _default(name, default)


def env_float(env: Mapping[str, str], name: str, default: float | None = None) -> float:
    """A number from the environment, or the default (the table's unless given) when unset or empty."""
    raw = env.get(name, "")
    return float(raw) if str(raw).strip() else float(_default(name, default))


def env_bool(env: Mapping[str, str], name: str, default: bool | None = None) -> bool:
    """A boolean from the environment: 1/true/yes/on are true; the default (the table's unless given)
    when unset or empty."""
    raw = str(env.get(name, "")).strip().lower()
    if not raw:
        return _default(name, default)
    return raw in ("1", "true", "yes", "on")


def env_secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret or an optional address, without surrounding spaces; None when unset or blank."""
    return (env.get(name) or "").strip() or None


def seconds_list(value: str) -> tuple[int, ...]:
    """`5,20,60` (WEBHOOK_RETRY_S) as whole seconds, none below 0."""
    return tuple(max(0, int(float(part))) for part in value.split(",") if part.strip())


def retry_seconds(env: Mapping[str, str]) -> tuple[int, ...]:
    """WEBHOOK_RETRY_S: the waits before each retry of a webhook delivery."""
    return seconds_list(env_str(env, "WEBHOOK_RETRY_S"))


def queue_concurrency(env: Mapping[str, str]) -> dict[str, int]:
    """CONCURRENCY_*: jobs in flight per queue name (the four operations' and `webhooks`), at least 1."""
    return {spec.name: max(1, env_int(env, spec.concurrency_env)) for spec in WORKER_QUEUES}


@dataclass(frozen=True)
class LogSettings:
    """LOG_FORMAT and LOG_LEVEL (`tasks/core/logs.py`)."""

    format: str = DEFAULTS["LOG_FORMAT"]
    level: str = DEFAULTS["LOG_LEVEL"]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LogSettings":
        """Read from a mapping (the process environment by default)."""
        env = os.environ if env is None else env
        return cls(format=env_str(env, "LOG_FORMAT").lower(), level=env_str(env, "LOG_LEVEL").upper())


@dataclass(frozen=True)
class StoreSettings:
    """Where image bytes live: BLOB_STORE, and the S3 store's endpoint, region and credentials
    (`tasks/core/blobs.py`)."""

    store: str = DEFAULTS["BLOB_STORE"]
    endpoint_url: str | None = None
    region: str = DEFAULTS["S3_REGION"]
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StoreSettings":
        """Read from a mapping (the process environment by default)."""
        env = os.environ if env is None else env
        return cls(store=env_str(env, "BLOB_STORE"), endpoint_url=env.get("S3_ENDPOINT_URL") or None,
                   region=env_str(env, "S3_REGION"), access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
                   secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker service reads from its environment."""

    redis_url: str = DEFAULTS["REDIS_URL"]
    dev: bool = DEFAULTS["INKQ_DEV"]
    engine: str = DEFAULTS["ENGINE"]
    gemini_api_key: str = field(default="", repr=False)
    gemini_base_url: str = ""
    gemini_model: str = DEFAULT_GEMINI_MODEL
    gemini_timeout_s: float = DEFAULTS["GEMINI_TIMEOUT_S"]
    gemini_max_rpm: int = DEFAULTS["GEMINI_MAX_RPM"]
    gemini_window_s: int = DEFAULTS["INKQ_GEMINI_WINDOW_S"]
    result_ttl_s: int = DEFAULTS["RESULT_TTL_S"]
    failure_ttl_s: int = DEFAULTS["FAILURE_TTL_S"]
    result_url_ttl_s: int = DEFAULTS["RESULT_URL_TTL_S"]
    max_pixels: int = DEFAULTS["MAX_PIXELS"]
    secret_key: str = field(default="", repr=False)
    public_url: str = ""  # as given; `tasks.core.links.checked_origin` checks it
    webhook_secret: str = field(default="", repr=False)
    webhook_allow_private: bool = DEFAULTS["WEBHOOK_ALLOW_PRIVATE"]
    webhook_retry_s: tuple[int, ...] = seconds_list(DEFAULTS["WEBHOOK_RETRY_S"])
    concurrency: Mapping[str, int] = field(default_factory=lambda: queue_concurrency({}))
    cpu_processes: int = field(default_factory=cores)
    worker_nice: int = DEFAULTS["WORKER_NICE"]
    dequeue_wait_s: int = DEFAULTS["INKQ_DEQUEUE_WAIT_S"]
    store: StoreSettings = field(default_factory=StoreSettings)
    log: LogSettings = field(default_factory=LogSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Build settings from a mapping (the process environment by default)."""
        env = os.environ if env is None else env
        return cls(
            redis_url=env_str(env, "REDIS_URL"),
            dev=env_bool(env, "INKQ_DEV"),
            engine=env_str(env, "ENGINE").lower(),
            gemini_api_key=env.get("GEMINI_API_KEY", ""),
            gemini_base_url=env.get("GEMINI_BASE_URL", ""),
            gemini_model=env_str(env, "GEMINI_IMAGE_MODEL"),
            gemini_timeout_s=env_float(env, "GEMINI_TIMEOUT_S"),
            gemini_max_rpm=env_int(env, "GEMINI_MAX_RPM"),
            gemini_window_s=max(1, env_int(env, "INKQ_GEMINI_WINDOW_S")),
            result_ttl_s=env_int(env, "RESULT_TTL_S"),
            failure_ttl_s=env_int(env, "FAILURE_TTL_S"),
            result_url_ttl_s=env_int(env, "RESULT_URL_TTL_S"),
            max_pixels=env_int(env, "MAX_PIXELS"),
            secret_key=env.get("SECRET_KEY", ""),
            public_url=env.get("PUBLIC_URL", ""),
            webhook_secret=env.get("WEBHOOK_SECRET", ""),
            webhook_allow_private=env_bool(env, "WEBHOOK_ALLOW_PRIVATE"),
            webhook_retry_s=retry_seconds(env),
            concurrency=queue_concurrency(env),
            cpu_processes=max(1, env_int(env, "INKQ_CPU_PROCESSES", cores())),
            worker_nice=min(max(env_int(env, "WORKER_NICE"), 0), 19),
            dequeue_wait_s=env_int(env, "INKQ_DEQUEUE_WAIT_S"),
            store=StoreSettings.from_env(env),
            log=LogSettings.from_env(env),
        )


_current: WorkerSettings | None = None


def use(settings: WorkerSettings) -> WorkerSettings:
    """Make `settings` this process's worker settings (the supervisor, once, before it forks)."""
    global _current
    _current = settings
    return settings


def current() -> WorkerSettings:
    """This process's worker settings: those given to `use`, else read from the environment once."""
    global _current
    if _current is None:
        _current = WorkerSettings.from_env()
    return _current
