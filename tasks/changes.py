"""Change announcements: a job's id, published on one channel after its status, stage or progress changed.

Writers publish after their change is in Redis: the work-horse (start and progress), the worker
(success, failure, retry, stop), the recovery sweep (in its Lua script) and the API (cancel). Each API
process listens with one connection and wakes only the event streams watching that job
(`api/events.py`). An announcement is a hint, never the data: a stream re-reads the job when woken,
so a lost announcement only delays an event until the stream's periodic re-read.
"""
from __future__ import annotations

import logging

from redis.exceptions import RedisError

CHANNEL = "inkq:changed"

log = logging.getLogger("inkq.changes")


def announce(connection, job_id: str) -> None:
    """Tell listening API processes that a job changed (best effort: a failure is logged, not raised)."""
    try:
        connection.publish(CHANNEL, job_id)
    except RedisError as exc:
        log.warning("could not announce a change of job %s: %s", job_id, exc)


def save_meta_and_announce(job) -> None:
    """`job.save_meta()` and `announce` in one round trip (a pipeline, no transaction): the meta write
    still raises on failure, the announcement stays best effort. A job start wrote its meta three times
    (start, input read, provider call), each followed by a separate PUBLISH; with 100 provider calls
    starting in the first second of a burst those round trips were a share of the cores that the API's
    submissions waited for (issue 17)."""
    pipe = job.connection.pipeline(transaction=False)
    pipe.hset(job.key, "meta", job._serialize_meta())
    pipe.publish(CHANNEL, job.id)
    saved, published = pipe.execute(raise_on_error=False)
    if isinstance(saved, Exception):
        raise saved
    if isinstance(published, Exception):
        log.warning("could not announce a change of job %s: %s", job.id, published)
