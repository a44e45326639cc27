"""Request rates per user, counted in Redis across API processes: submissions (the user's plan's `rate`,
`api/plans.py`, which is `RATE_LIMIT`, e.g. `120/minute`, without PLANS; a moving window) and every other authenticated request (`READ_RATE_LIMIT`, default
`3000/minute`, a sliding window counter: two counters per user, where a moving window would keep one
list entry per request).

Uses the `limits` library (the engine behind Flask-Limiter) directly, because the key is the
authenticated user, known only after authentication inside the view.

Reads: the default is far above what the web page does (the job list every 5 s, the balance on
changes) and above `make bench`'s heaviest read burst through Flask (2,000 event streams opened by
one user in 2 s). `GET /status/<id>` answered by the fast path (`fastpath.py`) is not counted: it
costs one read of one job (none while cached), less than the limiter's own round trip would, so
counting it would double the Redis work of the busiest route to protect nothing; its fall-throughs
(unknown ids, errors) reach the Flask view and are counted.
"""
from __future__ import annotations

import math
import time
from functools import wraps

from flask import current_app, g, request
from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from .errors import ApiError

COUNTED = "inkq.read_counted"  # set in the WSGI environ by a layer that already counted this request (fastpath.py)


class OverLimit(ApiError):
    """429 `rate_limited`: the caller is over one of its request limits."""


class UserLimiter:
    """A per-user limit on one kind of request.

    `pool`: the API's bounded Redis connection pool (api/__init__.py). Without it the `limits` storage
    builds its own unbounded pool: under gevent, a burst of N concurrent requests opened up to N new
    Redis connections per process, each a TCP connect and two CLIENT SETINFO round trips before the
    limiter's own (2,000 event streams opened at once)."""

    def __init__(self, redis_url: str, limit: str, scope: str, what: str, strategy=MovingWindowRateLimiter,
                 pool=None):
        self.items = parse_many(limit)
        self.scope, self.what = scope, what
        if pool is not None:
            storage = storage_from_string(redis_url, connection_pool=pool)
        else:
            storage = storage_from_string(redis_url, socket_connect_timeout=2)
        self.limiter = strategy(storage)

    def hit(self, user_id: str) -> None:
        """Count one request; 429 `rate_limited` with Retry-After when over the limit."""
        for item in self.items:
            if not self.limiter.hit(item, self.scope, user_id):
                raise self.refusal(item, user_id)

    def refusal(self, item, user_id: str) -> OverLimit:
        """The 429 for a request over `item`, with the seconds until the window lets the next one in."""
        reset_at, _ = self.limiter.get_window_stats(item, self.scope, user_id)
        return OverLimit(429, "rate_limited", f"Too many {self.what} (limit {item}); slow down.",
                        retry_after=max(1, math.ceil(reset_at - time.time())))

    def hits(self, user_id: str) -> list[tuple]:
        """This user's count of one request against every limit, as `(item, script, keys, args)`: the call
        `hit` makes through the `limits` library (its own Lua script and keys), for a caller that sends it
        in one round trip with its own commands (`leases.StreamLeases.open_on`). A falsy reply is a refusal
        (`refusal(item, user_id)`). Only for the sliding window counter (`reads`)."""
        storage = self.limiter.storage
        calls = []
        for item in self.items:
            name = item.key_for(self.scope, user_id)
            keys = [storage.prefixed_key(storage._previous_window_key(name)),  # as `hit` names them
                    storage.prefixed_key(storage._current_window_key(name))]
            calls.append((item, storage.lua_acquire_sliding_window, keys, [item.amount, item.get_expiry(), 1]))
        return calls


class PlanLimiter:
    """The limit on `POST /generate`: each plan's `rate`, one `UserLimiter` per distinct rate. A user's count
    is kept per rate, so a user whose plan changes starts counting afresh against the new one."""

    def __init__(self, redis_url: str, rates: dict[str, str], default: str, pool=None):
        made: dict[str, UserLimiter] = {}
        self.by_plan = {name: made.setdefault(rate, UserLimiter(redis_url, rate, "inkq-submit", "submissions",
                                                                pool=pool))
                        for name, rate in rates.items()}
        self.default = default

    def hit(self, user_id: str, plan: str | None = None) -> None:
        """Count one submission against the plan's rate (DEFAULT_PLAN's for None or an unknown plan)."""
        self.by_plan.get(plan or "", self.by_plan[self.default]).hit(user_id)


def submissions(redis_url: str, plans, pool=None) -> PlanLimiter:
    """The limit on `POST /generate`, per plan (`api.plans.Plans`)."""
    return PlanLimiter(redis_url, plans.rates(), plans.default, pool=pool)


def reads(redis_url: str, limit: str, pool=None) -> UserLimiter:
    """The limit on every other authenticated request."""
    return UserLimiter(redis_url, limit, "inkq-read", "requests", SlidingWindowCounterRateLimiter, pool=pool)


def limit_reads(view):
    """Count the (authenticated) caller's request against `READ_RATE_LIMIT`; admins are not limited."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not g.principal.is_admin and not request.environ.get(COUNTED):
            current_app.extensions["inkq"].read_limiter.hit(g.principal.user_id)
        return view(*args, **kwargs)

    return wrapper
