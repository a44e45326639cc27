"""The provider's quota, one budget for the whole fleet: every Gemini call of every worker service asks here first.

Gemini limits requests per minute per project, not per worker, so the budget lives in Redis:

- **The window.** With a budget (below), every call takes a place in a moving window of that many
  calls per `INKQ_GEMINI_WINDOW_S` (60; shorter only in tests) per model (`inkq:gemini:calls:<model>`,
  a sorted set of when each place was taken; one window per model whatever the budget, so a changed
  budget still counts the calls already sent). A call that finds the window full waits until its
  oldest call leaves it, plus a margin and a little jitter so the waiters do not all retry in the
  same millisecond. The margin is there because the provider counts a call when it arrives, which
  is later than when we counted it (the request is built and sent, an image uploaded): without it,
  a call sent just as our window freed a place met the provider's window still holding the late
  arrivals (measured with a 3 s window, a budget of 7 or 8 of the provider's 10: 3-4 of 33 calls
  refused without the margin, 0 of 30 in 5 runs with it).
- **Turns between users.** A free place goes to the waiting user served least recently
  (`inkq:gemini:served:<model>`, each user's last place; `inkq:gemini:waiting:<model>`, each waiting
  call by when it will next try). A user with 10 calls waiting and a user with 1 then take turns,
  instead of the place going to whichever of the 11 waiting calls wakes first (10 in 11 to the
  first user): one user's jobs cannot take the fleet's whole provider budget while another user's
  call waits. A call is passed over only for a call of another user that is due to try within
  `TURN_GRACE_S` (its margin and jitter), so no place is left empty for a caller that sleeps on; a
  waiting call not seen for `WAITER_STALE_S` past its time (its thread was stopped) no longer counts.
  Turns are per user, not per plan weight; they only matter while the window is full.
- **A 429.** Every worker holds back its next calls to that model until `inkq:gemini:hold:<model>`
  (a key that expires at the hold-until time) lapses. With Google's `RetryInfo` the hold is its
  delay; without one it grows with each 429 in a row (2, 4, 8 ... 60 s). Any call the provider took
  ends the streak. The job that got the 429 is retried by rq after the same delay (`tasks.core.errors.decide`).
- **What the fleet learns.** Every call the provider took is recorded by when it was sent
  (`inkq:gemini:taken:<model>`, a sorted set trimmed to one window): every call that reached the
  provider and was not refused with a 429, whatever its answer (an image, a 400 for an input it
  cannot process, a safety refusal, a 5xx, an answer cut off or late; `tasks.gemini.taken`). The
  provider counts all of them against the quota, so counting only the calls that succeeded taught the
  fleet a limit of 1 after one user's 8 refused inputs filled the provider's window. It
  is stamped by when it was sent because a call is known to be taken only when answered, seconds
  later, while a 429 comes back at once. On a 429 naming a per-minute quota,
  `inkq:gemini:learned:<model>` becomes the number of calls sent in the last window and taken (at
  least 1): the provider took that many. For one window after the first 429 (the learning burst) 429s
  and taken calls only raise it, since a 429 overtakes the calls still in flight. After that each
  429 lowers it by one: paced at the learned budget and still refused, the budget is above what the
  provider gives us now (an arrival delayed into the provider's next window, another client of the
  same project, a lowered quota). It can overshoot by the calls whose send-to-arrival delays carried
  them across the window's edge (a call or so), and every such refusal takes one off. It lives
  `LEARNED_TTL_WINDOWS` windows (10 minutes) after its last change, then the fleet goes unpaced
  again: a raised quota is used, an unchanged one is learned again from one burst of 429s. Clocks of
  the fleet's boxes must agree.
- Only a 429 that names a per-minute quota teaches (a `google.rpc.QuotaFailure` whose quota id says
  PerMinute, as Gemini's quota refusals carry; `tasks.gemini.per_minute_quota`). A 429 from
  overload or from a daily quota says nothing about the rate: learning from it would pace the fleet
  at the few calls that happened to be taken in the last minute (one, at a quiet hour) for ten
  minutes. Such a 429 only holds the calls for its delay.
- **The budget** is the lower of `GEMINI_MAX_RPM` and the learned limit; without either, calls are
  not paced (the provider's 429s hold them).
- Outside a job (no connection to count with) calls are not limited.
"""
from __future__ import annotations

import logging
import os
import random
import time

from .core import keys, scripts
from .core.settings import current

log = logging.getLogger("inkq.quota")

JITTER_S = 0.25
MARGIN_S = (0.5, 2.0)  # at least, at most; else 5% of the window
TURN_GRACE_S = MARGIN_S[1] + JITTER_S  # a place is kept for another user's call due to try within this
TURN_POLL_S = 0.1  # a call passed over for another user's tries again after this (plus jitter)
WAITER_STALE_S = 5.0  # a waiting call this late for its next try no longer holds a turn
MAX_BACKOFF_S = 60.0
STREAK_TTL_S = 120
LEARNED_TTL_WINDOWS = 10  # a learned limit lives 10 windows (10 minutes) after its last change
_scripts: dict[str, object] = {}

_TAKE_PLACE = scripts.load("quota_take_place")

_LEARN = scripts.load("quota_learn")


def max_rpm() -> int:
    """GEMINI_MAX_RPM, or 0 when unset (no budget of our own)."""
    return current().gemini_max_rpm


def window_s() -> int:
    """The budget's window in seconds (INKQ_GEMINI_WINDOW_S, 60)."""
    return current().gemini_window_s


def learned(redis, model: str) -> int:
    """The limit learned from the provider's 429s, or 0 when none is known."""
    value = redis.hget(keys.gemini_learned_key(model), "n")
    return int(value) if value is not None else 0


def budget(redis, model: str) -> int:
    """Calls per window for `model`: the lower of GEMINI_MAX_RPM and the learned limit; 0 for none."""
    return min((b for b in (max_rpm(), learned(redis, model)) if b > 0), default=0)


def _script(redis, source: str):
    """The script built once (its SHA), run on whichever connection is passed."""
    if source not in _scripts:
        _scripts[source] = redis.register_script(source)
    return _scripts[source]


def before_call(redis, model: str, user: str = "") -> float:
    """Wait until a call of `user` to `model` is within the fleet's budget and has its turn; the seconds waited."""
    started = time.monotonic()
    _wait_for_hold(redis, model)
    limit = budget(redis, model)
    if limit > 0:
        window = window_s()
        margin = min(MARGIN_S[1], max(MARGIN_S[0], 0.05 * window))
        user, call_id = user or "-", os.urandom(6).hex()
        try:
            while True:
                wait = float(_script(redis, _TAKE_PLACE)(
                    keys=[keys.gemini_calls_key(model), keys.gemini_served_key(model), keys.gemini_waiting_key(model)],
                    client=redis,
                    args=[f"{time.time():.6f}", window, limit, user, call_id, margin + JITTER_S,
                          TURN_GRACE_S, WAITER_STALE_S, TURN_POLL_S, window * LEARNED_TTL_WINDOWS]))
                if wait == 0:
                    break
                if wait > 0:
                    time.sleep(wait + margin + random.uniform(0, JITTER_S))
                else:
                    time.sleep(-wait + random.uniform(0, TURN_POLL_S))
                _wait_for_hold(redis, model)
                limit = budget(redis, model) or limit
        except BaseException:
            redis.zrem(keys.gemini_waiting_key(model), f"{user} {call_id}")
            raise
    waited = time.monotonic() - started
    if waited > 0.5:
        log.info("waited %.1f s for the provider's quota", waited)
    return waited


def _wait_for_hold(redis, model: str) -> None:
    while True:
        ms = redis.pttl(keys.gemini_hold_key(model))
        if ms <= 0:
            return
        time.sleep(ms / 1000 + random.uniform(0, JITTER_S))


def _learn(redis, model: str, event: str, sent_at: float = 0.0) -> int:
    window = window_s()
    member = f"{sent_at:.6f}:{os.urandom(4).hex()}"
    return int(_script(redis, _LEARN)(keys=[keys.gemini_learned_key(model), keys.gemini_taken_key(model)], client=redis,
                                      args=[f"{time.time():.6f}", window, window * LEARNED_TTL_WINDOWS * 1000,
                                            event, f"{sent_at:.6f}", member]))


def rate_limited(redis, model: str, delay: float | None, learn: bool = True) -> float:
    """A 429: hold every worker's calls to `model` for `delay` (or a growing backoff) and, when it names a
    per-minute quota (`learn`), learn the limit; the hold in seconds."""
    streak = redis.incr(keys.gemini_streak_key(model))
    redis.expire(keys.gemini_streak_key(model), STREAK_TTL_S)
    hold = delay if delay is not None and delay > 0 else min(MAX_BACKOFF_S, 2.0 ** streak)
    if redis.pttl(keys.gemini_hold_key(model)) < hold * 1000:
        redis.set(keys.gemini_hold_key(model), streak, px=max(1, int(hold * 1000)))
    if not learn:
        log.warning("provider refused a call to %s (429, no per-minute quota named): calls held for %.1f s "
                    "(429 #%d in a row)", model, hold, streak)
        return hold
    limit = _learn(redis, model, "429")
    log.warning("provider rate limit: calls to %s held for %.1f s (429 #%d in a row), paced at %d per %d s",
                model, hold, streak, limit, window_s())
    return hold


def taken(redis, model: str, sent_at: float | None = None) -> None:
    """The provider took a call sent at `sent_at` (epoch seconds): any answer but a 429, or a call lost after
    it was sent. The streak of 429s is over, and the call counts against the quota learned from the next 429."""
    redis.delete(keys.gemini_streak_key(model))
    _learn(redis, model, "taken", time.time() if sent_at is None else sent_at)
