"""Progress reporting from inside a job: `job.meta['progress']` (0-100) and `job.meta['stage']`."""
from __future__ import annotations

from typing import Callable

from .changes import save_meta_and_announce

Reporter = Callable[[int, str], None]


def silent(progress: int, stage: str) -> None:
    """A reporter that records nothing (engines called outside a job)."""


def job_reporter(job) -> Reporter:
    """A reporter that writes progress and stage into the RQ job's meta."""

    def report(progress: int, stage: str) -> None:
        job.meta["progress"] = max(0, min(100, int(progress)))
        job.meta["stage"] = stage
        save_meta_and_announce(job)

    return report
