"""How a job ends: one function, `finish`, that every way of ending a job calls, and one ordered list
of end-of-job concerns, `HOOKS`, that it runs.

The ways a job ends: completed, failed or retried by its worker (`tasks.runtime.worker.InkqWorker.end`),
timed out or stopped on request by its slot's supervisor (`tasks/runtime/slots.py`), ended after a dead
worker by the recovery sweep (`tasks/runtime/recovery.py`, through its `inkq:ending` entries), canceled while
waiting by the API (`api/store.py`), not started by its deadline (`expire`: outcome `expired`, status word
`canceled`; `tasks/core/deadlines.py`), and ended before an erasure when its worker did not stop it in time
(`tasks/erasure.py`).

`finish` runs one WATCH/MULTI/EXEC transaction:
1. the **fence**: the caller's proof that it still owns the job (a worker: its rq execution id is still
   in `rq:executions:<jobId>`, which the sweep removes when it takes the job from a dead or frozen
   worker; the sweep's drain: its entry is still in `inkq:ending`; the API: the job still waits), and
   the job has not ended already. A refused end writes nothing about the job: a worker frozen past
   its liveness (SIGSTOP, a paused VM, a partition) whose job ran again elsewhere cannot overwrite
   the second run's status, result, meta, credits or webhook;
2. the caller's rq writes for that outcome (status, result, registries, its execution's removal);
3. every hook, in order: fair order, credits, input, webhook, metrics, deadline, retention, announcement. A
   hook only adds commands to the transaction: no round trips, no S3 call. So the end, its settlement, its input's deletion and
   its webhook delivery's enqueue happen together or not at all.

`repair` is the one place where a read settles a charge left pending: an end interrupted before its
transaction (a job that expired, or one ended by code from before this module).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from redis.exceptions import WatchError

from .core import blobs, changes, credits, deadlines, fairness, metrics
from .core.keys import RETENTION_KEY, deadlines_key, executions_key, job_key

log = logging.getLogger("inkq.ending")

OUTCOMES = ("completed", "failed", "retried", "canceled", "expired")
ENDED = {b"finished", b"failed", b"stopped", b"canceled"}

Fence = Callable[[object], bool]  # given a pipeline in WATCH mode: WATCH its keys, read, True if still owner
Writes = Callable[[object], None]  # add the outcome's rq writes to a pipeline in MULTI mode


@dataclass
class Ending:
    """One job's end: its rq job, the outcome word, who ended it, how long it ran."""

    job: object
    outcome: str  # one of OUTCOMES
    by: str  # worker | supervisor-timeout | supervisor-stop | sweep | api | deadline | erasure (api, admin, retention)
    ran_s: float | None = None
    webhook_retry_s: tuple | None = None  # WEBHOOK_RETRY_S of a process other than a worker service (the API's)

    @property
    def final(self) -> bool:
        """Whether the job is over (a retried one runs again)."""
        return self.outcome != "retried"

    @property
    def user(self) -> str | None:
        """The job's owner."""
        return (self.job.meta or {}).get("user")


class Fairness:
    """Every end takes the job out of its queue's fair order if it still waits there (a cancel, a deadline, an
    erasure; a no-op otherwise), and a completed run adds its run time to the queue's p50
    (`tasks/core/fairness.py`)."""

    def on_end(self, ending: Ending, pipe) -> None:
        queue = ending.job.origin
        if not queue:
            return
        fairness.leave_in(pipe, queue, ending.job.id)
        if ending.outcome == "completed" and ending.ran_s is not None:
            fairness.record_run_in(pipe, queue, ending.ran_s)


class Credits:
    """A final end settles the charge: committed when completed, refunded otherwise (`tasks/core/credits.py`)."""

    def on_end(self, ending: Ending, pipe) -> None:
        if not ending.final:
            return
        credits.settle_in(pipe, ending.job.id, ending.user, refund=ending.outcome != "completed")


class Input:
    """A final end drops the input image, needed only by a run: deleted in the Redis store, made due now
    for the blob sweep in the S3 store (`tasks/core/blobs.py`)."""

    def on_end(self, ending: Ending, pipe) -> None:
        if not ending.final:
            return
        key = blobs.input_key(ending.job.id)
        pipe.delete(key)
        pipe.zadd(blobs.EXPIRY_KEY, {key: 0}, xx=True)


class Webhook:
    """A final end of a job with a webhook queues its delivery (`tasks/webhooks.py`) in the same step."""

    def on_end(self, ending: Ending, pipe) -> None:
        if ending.final:
            from . import webhooks

            word = "canceled" if ending.outcome == "expired" else ending.outcome  # the status word
            webhooks.schedule(ending.job, word, pipe, ending.webhook_retry_s)


class Metrics:
    """The outcome's counter and, for a run, its run time (`tasks/core/metrics.py`)."""

    def on_end(self, ending: Ending, pipe) -> None:
        queue = ending.job.origin
        metrics.count(None, queue, ending.outcome, pipeline=pipe)
        if ending.ran_s is not None:
            metrics.observe(None, "run", queue, ending.ran_s, pipeline=pipe)


class Deadline:
    """Any end (a retried job has started) takes the job out of the start deadlines (`tasks/core/deadlines.py`);
    a no-op for a job without one."""

    def on_end(self, ending: Ending, pipe) -> None:
        pipe.zrem(deadlines_key(), ending.job.id)


class Retention:
    """A final end of a job submitted with `retentionS` enters it in the retention set, due that long from now:
    the retention sweep erases it then (`tasks/erasure.py`). Its rq records expire `RETENTION_GRACE_S` later
    (its TTLs, set at submission), a backstop when no worker service sweeps."""

    def on_end(self, ending: Ending, pipe) -> None:
        keep = (ending.job.meta or {}).get("retentionS")
        if ending.final and isinstance(keep, int) and keep > 0:
            pipe.zadd(RETENTION_KEY, {ending.job.id: time.time() + keep})


class Announcement:
    """Event streams hear of the change (`tasks/core/changes.py`), sent when the transaction commits."""

    def on_end(self, ending: Ending, pipe) -> None:
        pipe.publish(changes.CHANNEL, ending.job.id)


HOOKS = [Fairness(), Credits(), Input(), Webhook(), Metrics(), Deadline(), Retention(), Announcement()]


def execution_fence(job_id: str, execution_id: str) -> Fence:
    """The fence of a worker's end: its execution still owns the job, and the job has not ended."""
    def owns(pipe) -> bool:
        pipe.watch(executions_key(job_id), job_key(job_id))
        return pipe.zscore(executions_key(job_id), execution_id) is not None and not ended(pipe, job_id)
    return owns


def ended(pipe, job_id: str) -> bool:
    """Whether the job's stored status is a final one (read on a watching pipeline)."""
    return pipe.hget(job_key(job_id), "status") in ENDED


def finish(connection, ending: Ending, writes: Writes | None, fence: Fence) -> bool:
    """End a job: fence check, then `writes` and every hook in one transaction. True if this call ended
    it, False if the fence refused (another execution owns the job, or it has ended)."""
    with connection.pipeline() as pipe:
        while True:
            try:
                if not fence(pipe):
                    pipe.unwatch()
                    return False
                ending.job.get_meta(refresh=True)  # the stored meta (progress, cancel mark), read under WATCH
                pipe.multi()
                if writes is not None:
                    writes(pipe)
                for hook in HOOKS:
                    hook.on_end(ending, pipe)
                pipe.execute()
                return True
            except WatchError:
                continue


def drop_input_now(store, job_id: str) -> None:
    """After a final end: delete the input object now rather than at the blob sweep's next run (the `Input`
    hook made it due); best effort, the sweep deletes it otherwise."""
    try:
        blobs.discard_input(store, job_id)
    except Exception as exc:  # noqa: BLE001 - a Redis or store error: it is due, the blob sweep deletes it
        log.warning("could not delete the input of job %s now (%s); the blob sweep will", job_id, exc)


def refused(connection, job, execution_id: str, by: str) -> None:
    """A late end: logged and counted (`inkq_jobs_total{outcome="late"}`); nothing about the job is written."""
    log.warning("late end of job %s from execution %s refused (%s): the job is owned or ended elsewhere",
                job.id, execution_id, by)
    metrics.count(connection, job.origin, "late")


def repair(connection, job_id: str, user_id: str | None, word: str) -> None:
    """Settle the pending charge of a job found ended (refund unless completed): the repair of an end
    interrupted before its transaction. Idempotent (the charge is consumed once)."""
    if word in ("completed", "failed", "canceled"):
        credits.settle(connection, job_id, user_id, refund=word != "completed")


def expire(connection, job, claims_key: str | None = None, webhook_retry_s: tuple | None = None) -> bool:
    """End a job not started by its deadline (`tasks/core/deadlines.py`): canceled, refunded, never run. By a
    supervisor or the API while it waits in its queue (`claims_key` None), or by the worker that took it
    (its claims list). True if this call ended it."""
    fence = deadlines.claimed_fence(job, claims_key) if claims_key else deadlines.waiting_fence(job)
    done = finish(connection, Ending(job, "expired", "deadline", webhook_retry_s=webhook_retry_s),
                  deadlines.writes(job, claims_key), fence)
    if done:
        log.info("job %s not started by its deadline (maxWaitS=%s): canceled", job.id, job.meta.get("maxWaitS"))
    return done


def expire_due(connection, now: float | None = None) -> list:
    """A supervisor's pass over the start deadlines: end each due job still waiting in its queue; drop the
    entries of jobs gone or started. The jobs ended (rq `Job`s, for the caller to drop their inputs)."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    ended, gone = [], []
    for job_id in deadlines.due_ids(connection, now):
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            gone.append(job_id)
            continue
        if job.get_status(refresh=False) in ("finished", "failed", "stopped", "canceled") \
                or not deadlines.never_started(job.meta):
            gone.append(job_id)  # started, or ended outside the end path (an operator in rq-dashboard)
        elif expire(connection, job):
            ended.append(job)
    deadlines.forget(connection, *gone)
    return ended
