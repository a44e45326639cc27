"""A job's start deadline: `maxWaitS` on `POST /generate` (1-86400 s).

At submission the API writes `deadline` (epoch seconds: the submission's time + maxWaitS) and `maxWaitS`
into the job's meta, and adds the job to one sorted set scored by its deadline (`keys.deadlines_key`),
in the job's enqueue transaction (`api.store.JobStore.enqueue`).

A job that has not started by then (its `attempts` still 0) ends `canceled`, its `error` saying why
(`expired_message`), through the one end path, `tasks.ending.expire` (outcome `expired`, by
`deadline`): never run, its credit refunded, its input dropped, its webhook sent with `canceled`.
Three parties end it, whichever sees it first:

1. every worker service's supervisor, each half second, whatever its workers are doing
   (`tasks/runtime/cli.py`, `tasks.ending.expire_due`);
2. the API, when its owner's status read, event stream or job list sees it waiting past its deadline,
   so a client polling at the deadline sees `canceled` even while every worker is busy;
3. a worker that takes it off its queue past its deadline ends it instead of running it
   (`tasks.runtime.slots.SlotWorker.execute_job`).

Which of them may end it is fenced by where its id is, so that a job being taken is never ended under its
worker: while the id is in its queue's list, the supervisors and the API may (`waiting_fence`, which
WATCHes the job and the list: a worker's take between the check and the end aborts the end); once a
worker has moved it into its claims list (`tasks.runtime.worker.InkqQueue`), only that worker may
(`claimed_fence`). Two parties ending it at once race through `tasks.ending.finish`: one wins, the other
finds it ended.

The sorted set holds only jobs that have not ended: every end removes its entry (the `Deadline` hook
of `tasks/ending.py`, so erasure too), and the supervisors' pass removes the entries of jobs found
started (the deadline no longer applies) or gone. Deadlines are compared with each process's clock:
keep the API's and the workers' clocks synchronised (NTP), as rq's own scheduling needs.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from .keys import deadlines_key, queue_key

MIN_WAIT_S = 1
MAX_WAIT_S = 86400
BATCH = 200  # due entries a supervisor's pass looks at, at most


def expired_message(max_wait_s) -> str:
    """The `error` of a job ended by its deadline."""
    return f"Not started within maxWaitS={max_wait_s} seconds of its submission."


def meta_of(max_wait_s: int, now: float | None = None) -> dict:
    """The meta fields a submission with `maxWaitS` stores: the deadline (epoch seconds) and maxWaitS."""
    return {"deadline": round((time.time() if now is None else now) + max_wait_s, 3), "maxWaitS": max_wait_s}


def never_started(meta: dict) -> bool:
    """Whether the job has never started running (its deadline still applies)."""
    return not int(meta.get("attempts") or 0) and not meta.get("startedAt")


def is_due(meta: dict, now: float | None = None) -> bool:
    """Whether a job with this meta has a deadline, has never started, and its deadline has passed."""
    deadline = meta.get("deadline")
    if not isinstance(deadline, (int, float)) or not never_started(meta):
        return False
    return (time.time() if now is None else now) >= deadline


def seconds_left(meta: dict, now: float | None = None) -> float | None:
    """Seconds until the deadline of a job that has never started; None when it has none."""
    deadline = meta.get("deadline")
    if not isinstance(deadline, (int, float)) or not never_started(meta):
        return None
    return deadline - (time.time() if now is None else now)


def due_ids(redis, now: float | None = None, limit: int = BATCH) -> list[str]:
    """The ids whose deadline has passed, earliest first (at most `limit`)."""
    raw = redis.zrangebyscore(deadlines_key(), "-inf", time.time() if now is None else now, start=0, num=limit)
    return [i.decode() if isinstance(i, bytes) else i for i in raw]


def forget(redis, *job_ids: str) -> None:
    """Drop deadline entries (jobs gone, or started)."""
    if job_ids:
        redis.zrem(deadlines_key(), *job_ids)


def _still_due(pipe, job) -> bool:
    return pipe.hget(job.key, "status") == b"queued" and is_due(job.get_meta(refresh=True))


def waiting_fence(job):
    """The fence of an end by a supervisor or the API: the job waits in its queue's list (not taken by a
    worker), has never started, and its deadline has passed."""
    def fence(pipe) -> bool:
        qkey = queue_key(job.origin)
        pipe.watch(job.key, qkey)
        return pipe.lpos(qkey, job.id) is not None and _still_due(pipe, job)
    return fence


def claimed_fence(job, claims_key: str):
    """The fence of an end by the worker that took the job: the id is in that worker's claims list, the job
    has never started, and its deadline has passed."""
    def fence(pipe) -> bool:
        pipe.watch(job.key, claims_key)
        return pipe.lpos(claims_key, job.id) is not None and _still_due(pipe, job)
    return fence


def writes(job, claims_key: str | None = None, failure_ttl_s: int = 604800):
    """The rq writes of the end: canceled (rq's cancel: status, out of its queue, the canceled registry),
    the meta that says why, kept for its failure TTL as `api.store.JobStore.expire_canceled` keeps a
    canceled job; out of the claims list of the worker that took it."""
    from rq.registry import CanceledJobRegistry

    def add(pipe) -> None:
        now = time.time()
        ttl = int(job.failure_ttl or failure_ttl_s)
        job.meta.update(expired=True, error=expired_message(job.meta.get("maxWaitS")), stage="canceled",
                        canceledAt=datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        job.cancel(pipeline=pipe)
        pipe.hset(job.key, "meta", job._serialize_meta())
        registry = CanceledJobRegistry(job.origin, connection=job.connection, serializer=job.serializer).key
        pipe.expire(job.key, ttl)
        pipe.zadd(registry, {job.id: now + ttl})
        pipe.zremrangebyscore(registry, "-inf", now)
        if claims_key:
            pipe.lrem(claims_key, 0, job.id)
    return add
