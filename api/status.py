"""The status object of API.md, built from an RQ job: the one place RQ states become status words."""
from __future__ import annotations

from datetime import datetime, timezone

from rq.job import Job, JobStatus

from tasks.errors import CANCELED_MESSAGE, CRASH_FAILURE, GENERIC_FAILURE

WAITING, ACTIVE, COMPLETED, FAILED, CANCELED = "waiting", "active", "completed", "failed", "canceled"
STATUS_WORDS = (WAITING, ACTIVE, COMPLETED, FAILED, CANCELED)
TERMINAL = frozenset({COMPLETED, FAILED, CANCELED})

_WORDS = {
    JobStatus.QUEUED: WAITING,
    JobStatus.DEFERRED: WAITING,
    JobStatus.SCHEDULED: WAITING,
    JobStatus.CREATED: WAITING,
    JobStatus.STARTED: ACTIVE,
    JobStatus.FINISHED: COMPLETED,
    JobStatus.FAILED: FAILED,
    JobStatus.STOPPED: CANCELED,
    JobStatus.CANCELED: CANCELED,
}


def status_word(rq_status: JobStatus | str | None) -> str:
    """Map an RQ job status to the contract's status word."""
    if rq_status is None:
        return FAILED
    return _WORDS.get(JobStatus(rq_status), WAITING)


def word_of(job: Job, refresh: bool = False) -> str:
    """A job's status word; a job canceled while a worker was taking it (it refused to run) is canceled."""
    word = status_word(job.get_status(refresh=refresh))
    if word == FAILED and refresh:
        job.get_meta(refresh=True)
    if word == FAILED and job.meta.get("canceled"):
        return CANCELED
    return word


def iso(value: datetime | str | None) -> str | None:
    """ISO 8601 in UTC with a Z suffix, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_text(job: Job, word: str) -> str | None:
    """The human-readable reason a job failed, never a traceback."""
    if word == CANCELED:
        return CANCELED_MESSAGE
    if word != FAILED:
        return None
    return job.meta.get("error") or (CRASH_FAILURE if job.meta.get("attempts") else GENERIC_FAILURE)


def describe(job: Job, result_url=None) -> dict:
    """The status object for a job; `result_url(job)` builds the signed image URL."""
    meta = job.meta
    word = word_of(job)
    result = None
    if word == COMPLETED:
        value = job.return_value(refresh=False) or {}
        result = {k: v for k, v in value.items() if k != "outputKey"}
        result["image"] = result_url(job) if result_url else None
    progress = 100 if word == COMPLETED else int(meta.get("progress", 0))
    stage = meta.get("stage") or {WAITING: "queued", COMPLETED: "done", CANCELED: "canceled"}.get(word, "")
    if word == WAITING and meta.get("attempts"):
        stage = "waiting to retry"
    ended = job.ended_at if word in TERMINAL else None
    if word == CANCELED:
        ended = ended or meta.get("canceledAt")
    return {
        "jobId": job.id,
        "queue": job.origin,
        "operation": meta.get("operation"),
        "status": word,
        "progress": progress,
        "stage": stage,
        "result": result,
        "error": error_text(job, word),
        "attempts": int(meta.get("attempts", 0)),
        "createdAt": iso(job.created_at),
        "startedAt": meta.get("startedAt"),
        "endedAt": iso(ended),
    }
