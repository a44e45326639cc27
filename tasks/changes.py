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
