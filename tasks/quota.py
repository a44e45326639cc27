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
  delay; without one it grows with each 429 in a row (2, 4, 8 ... 60 s). A successful call ends the streak.
- The fleet learns the provider's limit from its 429s, so that after the first burst of refusals
  the calls go out at that pace through the same moving window, instead of every waiting call
  going out the moment the hold lapses (5 of them accepted, 5 refused again, every window). Every
  answered call is recorded by when it was sent (`inkq:gemini:answered:<model>`, a sorted set
  trimmed to one window: the `limits` window stamps a call when it is counted, but a call is known
  to have been accepted only when answered, seconds after it was sent, while a 429 comes back at
  once). On a 429, `inkq:gemini:learned:<model>` becomes the number of calls sent in the last
  window and answered (at least 1): the provider took that many. For one window after the first
  429 (the learning burst) 429s and answers only raise it, since a 429 overtakes the accepted
  calls still in flight. After that each 429 lowers it by one: paced at the learned budget and
  still refused, the budget is above what the provider gives us now (an arrival delayed into the
  provider's next window, another client of the same project, a lowered quota). It can overshoot
  by the calls whose send-to-arrival delays carried them across the window's edge (a call or so),
  and every such refusal takes one off. It lives `LEARNED_TTL_WINDOWS` windows (10 minutes) after
  its last change, then the fleet goes unpaced again: a raised quota is used, an unchanged one is
  learned again from one burst of 429s. Clocks of the fleet's boxes must agree (as for `limits`).
- Only a 429 that names a per-minute quota teaches (a `google.rpc.QuotaFailure` whose quota id says
  PerMinute, as Gemini's quota refusals carry; `tasks.gemini.per_minute_quota`). A 429 from
  overload or from a daily quota says nothing about the rate: learning from it would pace the fleet
  at the few calls that happened to be answered in the last minute (one, at a quiet hour) for ten
  minutes. Such a 429 only holds the calls for its delay.
- The budget is the lower of `GEMINI_MAX_RPM` and the learned limit; a call waits for a place in
  the moving window when there is one (one window per model, whatever the budget, so a changed
  budget still counts the calls already sent).
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
LEARNED_TTL_WINDOWS = 10  # a learned limit lives 10 windows (10 minutes) after its last change
_limiters: dict[str, object] = {}
_learn_script = None
_lock = threading.Lock()

# KEYS: the learned limit (hash: n, since), the answered calls (sorted set of send times).
# ARGV: now, window (s), TTL of the learned limit (ms), event ("answered" or "429"), send time, member.
_LEARN = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[4] == 'answered' then
  redis.call('zadd', KEYS[2], ARGV[5], ARGV[6])
  redis.call('pexpire', KEYS[2], math.ceil(window * 1000))
end
redis.call('zremrangebyscore', KEYS[2], '-inf', '(' .. string.format('%.6f', now - window))
local count = redis.call('zcard', KEYS[2])
local n = tonumber(redis.call('hget', KEYS[1], 'n'))
local since = redis.call('hget', KEYS[1], 'since')
local learning = n ~= nil and now - tonumber(since) < window
local new
if ARGV[4] == 'answered' then
  if not learning or count <= n then return n or 0 end
  new = count
elseif n == nil then
  new, since = math.max(1, count), ARGV[1]
elseif learning then
  new = math.max(1, n, count)
else
  new = math.max(1, n - 1)
end
redis.call('hset', KEYS[1], 'n', new, 'since', since)
redis.call('pexpire', KEYS[1], ARGV[3])
return new
"""


def hold_key(model: str) -> str:
    """Exists (with its expiry at the hold-until time) while every worker holds back calls to `model`."""
    return f"inkq:gemini:hold:{model}"


def streak_key(model: str) -> str:
    """429s in a row for `model`, for the backoff when the provider sends no delay."""
    return f"inkq:gemini:429s:{model}"


def learned_key(model: str) -> str:
    """The provider's limit for `model` learned from its 429s (hash: `n` calls per window, `since`)."""
    return f"inkq:gemini:learned:{model}"


def answered_key(model: str) -> str:
    """Calls to `model` answered in the last window, scored by when they were sent."""
    return f"inkq:gemini:answered:{model}"


def max_rpm(env=None) -> int:
    """GEMINI_MAX_RPM, or 0 when unset (no budget of our own)."""
    return env_int(os.environ if env is None else env, "GEMINI_MAX_RPM", 0)


def window_s(env=None) -> int:
    """The budget's window in seconds (INKQ_GEMINI_WINDOW_S, 60)."""
    return max(1, env_int(os.environ if env is None else env, "INKQ_GEMINI_WINDOW_S", 60))


def learned(redis, model: str) -> int:
    """The limit learned from the provider's 429s, or 0 when none is known."""
    value = redis.hget(learned_key(model), "n")
    return int(value) if value is not None else 0


def budget(redis, model: str) -> int:
    """Calls per window for `model`: the lower of GEMINI_MAX_RPM and the learned limit; 0 for none."""
    return min((b for b in (max_rpm(), learned(redis, model)) if b > 0), default=0)


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
    limit = budget(redis, model)
    if limit > 0:
        # The limiter's storage with one key per model (a `RateLimitItem` puts its amount in its key),
        # so a learned budget that changes still counts the calls already in the window.
        storage = _limiter(redis_url).storage
        key, window = f"inkq-gemini/{model}", window_s()
        while not storage.acquire_entry(key, limit, window):
            oldest, _ = storage.get_moving_window(key, limit, window)
            margin = min(MARGIN_S[1], max(MARGIN_S[0], 0.05 * window))
            time.sleep(max(0.05, oldest + window - time.time()) + margin + random.uniform(0, JITTER_S))
            _wait_for_hold(redis, model)
            limit = budget(redis, model) or limit
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


def _learn(redis, model: str, event: str, sent_at: float = 0.0) -> int:
    global _learn_script
    if _learn_script is None:  # built once (its SHA), run on whichever connection is passed
        _learn_script = redis.register_script(_LEARN)
    window = window_s()
    script = _learn_script
    member = f"{sent_at:.6f}:{os.urandom(4).hex()}"
    return int(script(keys=[learned_key(model), answered_key(model)], client=redis,
                      args=[f"{time.time():.6f}", window, window * LEARNED_TTL_WINDOWS * 1000, event,
                            f"{sent_at:.6f}", member]))


def rate_limited(redis, model: str, delay: float | None, learn: bool = True) -> float:
    """A 429: hold every worker's calls to `model` for `delay` (or a growing backoff) and, when it names a
    per-minute quota (`learn`), learn the limit; the hold in seconds."""
    streak = redis.incr(streak_key(model))
    redis.expire(streak_key(model), STREAK_TTL_S)
    hold = delay if delay is not None and delay > 0 else min(MAX_BACKOFF_S, 2.0 ** streak)
    if redis.pttl(hold_key(model)) < hold * 1000:
        redis.set(hold_key(model), streak, px=max(1, int(hold * 1000)))
    if not learn:
        log.warning("provider refused a call to %s (429, no per-minute quota named): calls held for %.1f s "
                    "(429 #%d in a row)", model, hold, streak)
        return hold
    limit = _learn(redis, model, "429")
    log.warning("provider rate limit: calls to %s held for %.1f s (429 #%d in a row), paced at %d per %d s",
                model, hold, streak, limit, window_s())
    return hold


def answered(redis, model: str, sent_at: float | None = None) -> None:
    """A call sent at `sent_at` (epoch seconds) was answered: the streak of 429s is over, the call counts as accepted."""
    redis.delete(streak_key(model))
    _learn(redis, model, "answered", time.time() if sent_at is None else sent_at)
