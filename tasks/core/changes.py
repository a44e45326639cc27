"""Change announcements: a job's id, published on one channel after its status, stage or progress changed.

Writers publish after their change is in Redis: the job (start and progress) and every end of a job
(`tasks/ending.py`, in the end's transaction). Each API
process listens with one connection and wakes only the event streams watching that job
(`api/events.py`). An announcement is a hint, never the data: a stream re-reads the job when woken,
so a lost announcement only delays an event until the stream's periodic re-read.
"""
from __future__ import annotations

import logging

from redis.exceptions import RedisError

from . import scripts
from .keys import CHANGES_CHANNEL as CHANNEL, executions_key

EXECUTION_ATTR = "inkq_execution_id"  # on an rq Job object: the execution running that copy

log = logging.getLogger("inkq.changes")


def announce(connection, job_id: str) -> None:
    """Tell listening API processes that a job changed (best effort: a failure is logged, not raised)."""
    try:
        connection.publish(CHANNEL, job_id)
    except RedisError as exc:
        log.warning("could not announce a change of job %s: %s", job_id, exc)


def execution_of(job) -> str | None:
    """The id of the rq execution running this copy of the job (set by the worker that runs it), or None."""
    return getattr(job, EXECUTION_ATTR, None)


def save_meta_and_announce(job) -> bool:
    """`job.save_meta()` and `announce` in one round trip (a script). A job start wrote its meta three
    times (start, input read, provider call), each followed by a separate PUBLISH; with 100 provider
    calls starting in the first second of a burst those round trips were a share of the cores that the
    API's submissions waited for.

    Fenced: a copy run by an execution (`execution_of`) writes only while that execution still owns the
    job (`tasks/ending.py`), so a worker frozen past its liveness that resumes cannot set back the
    progress, stage or attempts of the run that replaced it. False when refused."""
    execution = execution_of(job) or ""
    return bool(job.connection.eval(scripts.load("save_meta"), 2, job.key, executions_key(job.id),
                                    job._serialize_meta(), CHANNEL, job.id, execution))
