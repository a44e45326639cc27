"""Submissions per user (`RATE_LIMIT`, e.g. `120/minute`), counted in Redis across API processes.

Uses the `limits` library (the engine behind Flask-Limiter) directly, because the key is the
authenticated user, known only after authentication inside the view.
"""
from __future__ import annotations

import math
import time

from limits import parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from .errors import ApiError


class SubmissionLimiter:
    """A moving-window limit on submissions per user."""

    def __init__(self, redis_url: str, limit: str):
        self.items = parse_many(limit)
        self.limiter = MovingWindowRateLimiter(storage_from_string(redis_url, socket_connect_timeout=2))

    def hit(self, user_id: str) -> None:
        """Count one submission; 429 `rate_limited` with Retry-After when over the limit."""
        for item in self.items:
            if not self.limiter.hit(item, "inkq-submit", user_id):
                reset_at, _ = self.limiter.get_window_stats(item, "inkq-submit", user_id)
                raise ApiError(429, "rate_limited", f"Too many submissions (limit {item}); slow down.",
                               retry_after=max(1, math.ceil(reset_at - time.time())))
