"""The provider's quota, one budget for the whole fleet: every Gemini call of every worker service asks here first.

Gemini limits requests per minute per project, not per worker, so the budget lives in Redis:

- `GEMINI_MAX_RPM` set: a moving window of that many calls per minute per model, counted with the
  `limits` library (the same engine as the API's submission limit). A call that finds the window
  full waits until its oldest call leaves it, plus a margin and a little jitter so the waiters do
  not all retry in the same millisecond. The margin is there because the provider counts a call
  when it arrives, which is later than when we counted it (the request is built and sent, an image
  uploaded): without it, a call sent just as our window freed a place met the provider's window
  still holding the late arrivals (measured with a 3 s window, a budget of 7 or 8
  of the provider's 10: 3-4 of 33 calls refused without the margin, 0 of 30 in 5 runs with it). The window is `INKQ_GEMINI_WINDOW_S` long (60; shorter only in tests).
- A 429: every worker holds back its next calls to that model until `inkq:gemini:hold:<model>`
  (a key that expires at the hold-until time) lapses. With Google's `RetryInfo` the hold is its
  delay; without one it grows with each 429 in a row (2, 4, 8 ... 60 s), so without
  `GEMINI_MAX_RPM` the 429s themselves slow the fleet down. A successful call ends the streak.
- The job that got the 429 is retried by rq after the same delay (`tasks.errors.decide`).
- Outside a job (no connection to count with) calls are not limited.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time

from .settings import env_int

log = logging.getLogger("inkq.quota")

JITTER_S = 0.25
MARGIN_S = (0.5, 2.0)  # at least, at most; else 5% of the window
MAX_BACKOFF_S = 60.0
STREAK_TTL_S = 120
_limiters: dict[str, object] = {}
_lock = threading.Lock()


def hold_key(model: str) -> str:
    """Exists (with its expiry at the hold-until time) while every worker holds back calls to `model`."""
    return f"inkq:gemini:hold:{model}"


def streak_key(model: str) -> str:
    """429s in a row for `model`, for the backoff when the provider sends no delay."""
    return f"inkq:gemini:429s:{model}"


def max_rpm(env=None) -> int:
    """GEMINI_MAX_RPM, or 0 when unset (no budget of our own)."""
    return env_int(os.environ if env is None else env, "GEMINI_MAX_RPM", 0)


def window_s(env=None) -> int:
    """The budget's window in seconds (INKQ_GEMINI_WINDOW_S, 60)."""
    return max(1, env_int(os.environ if env is None else env, "INKQ_GEMINI_WINDOW_S", 60))


def _limiter(redis_url: str):
    from limits.storage import storage_from_string
    from limits.strategies import MovingWindowRateLimiter

    with _lock:
        if redis_url not in _limiters:
            _limiters[redis_url] = MovingWindowRateLimiter(storage_from_string(redis_url, socket_connect_timeout=2))
        return _limiters[redis_url]


def before_call(redis, redis_url: str, model: str) -> float:
    """Wait until a call to `model` is within the fleet's budget; the seconds waited."""
    started = time.monotonic()
    _wait_for_hold(redis, model)
    rpm = max_rpm()
    if rpm > 0:
        from limits import RateLimitItemPerSecond

        item = RateLimitItemPerSecond(rpm, window_s())
        limiter = _limiter(redis_url)
        while not limiter.hit(item, "inkq-gemini", model):
            reset_at, _ = limiter.get_window_stats(item, "inkq-gemini", model)
            margin = min(MARGIN_S[1], max(MARGIN_S[0], 0.05 * window_s()))
            time.sleep(max(0.05, reset_at - time.time()) + margin + random.uniform(0, JITTER_S))
            _wait_for_hold(redis, model)
    waited = time.monotonic() - started
    if waited > 0.5:
        log.info("waited %.1f s for the provider's quota", waited)
    return waited


def _wait_for_hold(redis, model: str) -> None:
    while True:
        ms = redis.pttl(hold_key(model))
        if ms <= 0:
            return
        time.sleep(ms / 1000 + random.uniform(0, JITTER_S))


def rate_limited(redis, model: str, delay: float | None) -> float:
    """A 429: hold every worker's calls to `model` for `delay` (or a growing backoff); the hold in seconds."""
    streak = redis.incr(streak_key(model))
    redis.expire(streak_key(model), STREAK_TTL_S)
    hold = delay if delay is not None and delay > 0 else min(MAX_BACKOFF_S, 2.0 ** streak)
    if redis.pttl(hold_key(model)) < hold * 1000:
        redis.set(hold_key(model), streak, px=max(1, int(hold * 1000)))
    log.warning("provider rate limit: calls to %s held for %.1f s (429 #%d in a row)", model, hold, streak)
    return hold


def answered(redis, model: str) -> None:
    """A call was answered: the streak of 429s is over."""
    redis.delete(streak_key(model))
