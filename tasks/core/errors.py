"""Errors a job can raise, and the one place that decides whether a failure is retried.

Engines and providers raise `FinalError` (retrying cannot help: bad image, safety block) or
`TransientError` (rate limit, 5xx, timeout). Anything else is a bug or an unexpected failure: it
is not retried and the user sees a generic message, never a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass

GENERIC_FAILURE = "The job failed unexpectedly while processing the image."
TIMEOUT_FAILURE = "The job took longer than its time limit."
CRASH_FAILURE = "The worker running the job stopped unexpectedly."
CANCELED_MESSAGE = "Canceled by its owner."


class JobError(Exception):
    """A failure with a message that is safe to show to the job's owner."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class FinalError(JobError):
    """A failure that retrying cannot fix (unusable image, safety block, bad request)."""


class TransientError(JobError):
    """A failure that may pass (rate limit, server error, timeout); `retry_after` in seconds if known."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Decision:
    """What to do with a failed attempt."""

    retry: bool
    delay: int
    message: str


def backoff(attempt: int, base: int = 2, cap: int = 60) -> int:
    """Exponential backoff in whole seconds for the given 1-based attempt."""
    return min(cap, base ** max(attempt, 1))


def decide(exc: BaseException, attempt: int, retries_left: int) -> Decision:
    """Decide whether a failed attempt is retried, after how long, and what the user reads."""
    from rq.timeouts import JobTimeoutException

    if isinstance(exc, TransientError):
        delay = backoff(attempt)
        if exc.retry_after is not None:
            delay = max(1, int(-(-exc.retry_after // 1)))
        return Decision(retries_left > 0, delay, exc.message)
    if isinstance(exc, JobTimeoutException):
        return Decision(retries_left > 0, backoff(attempt), TIMEOUT_FAILURE)
    if isinstance(exc, JobError):
        return Decision(False, 0, exc.message)
    return Decision(False, 0, GENERIC_FAILURE)
