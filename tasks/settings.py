"""Worker-side settings, read from the environment (names fixed by API.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

DEFAULT_GEMINI_MODEL = "gemini-3.1-flash-image"


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """An integer from the environment, or the default when unset or empty."""
    raw = env.get(name, "")
    return int(raw) if str(raw).strip() else default


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean from the environment: 1/true/yes/on are true."""
    raw = str(env.get(name, "")).strip().lower()
    if not raw:
        return default
    return raw in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class WorkerSettings:
    """What the job functions and engines need to know."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    gemini_api_key: str = ""
    gemini_base_url: str = ""
    gemini_model: str = DEFAULT_GEMINI_MODEL
    gemini_timeout_s: float = 60.0
    engine: str = "auto"
    result_ttl_s: int = 86400
    failure_ttl_s: int = 604800
    max_pixels: int = 40_000_000
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Build settings from a mapping (the process environment by default)."""
        env = os.environ if env is None else env
        return cls(
            redis_url=env.get("REDIS_URL") or cls.redis_url,
            gemini_api_key=env.get("GEMINI_API_KEY", ""),
            gemini_base_url=env.get("GEMINI_BASE_URL", ""),
            gemini_model=env.get("GEMINI_IMAGE_MODEL") or DEFAULT_GEMINI_MODEL,
            gemini_timeout_s=float(env.get("GEMINI_TIMEOUT_S") or 60),
            engine=(env.get("ENGINE") or "auto").lower(),
            result_ttl_s=env_int(env, "RESULT_TTL_S", 86400),
            failure_ttl_s=env_int(env, "FAILURE_TTL_S", 604800),
            max_pixels=env_int(env, "MAX_PIXELS", 40_000_000),
        )
