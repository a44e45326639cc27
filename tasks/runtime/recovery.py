"""Recovery of jobs whose worker died: one sweep, one Lua script, run every second by any worker service.

Why: RQ notices a dead worker only when the job's heartbeat has lapsed (60 s or more) and then only at
some worker's next maintenance run (every 10 minutes); a job id taken off the queue by a worker that
died before starting it sits in the queue's intermediate list for at least a minute and is then failed,
not run (rq#2079, rq#2061). inkq keeps RQ and adds three things:

1. **Liveness.** Every rq worker process keeps `inkq:alive:<worker>` alive (PX `LIVENESS_TTL_MS`, renewed
   every `LIVENESS_EVERY_S` by a thread of its own, whatever the job is doing) and is listed in
   `inkq:workers:<queue>`. A worker is dead when it is listed and its key has lapsed. A listed worker
   that is alive is never judged, however long its job runs.
2. **Claims.** A worker moves a job id from its queue into its own list, `inkq:claims:<worker>`
   (`tasks.runtime.worker.InkqQueue`), instead of RQ's shared intermediate list, and takes it out in the same
   transaction that records the execution in RQ's started registry. So every id is always in exactly one
   place: the queue, one worker's claims, or the started registry, and each place has an owner whose
   death is visible.
3. **The sweep** (`SWEEP`, `tasks/core/lua/sweep.lua`), run by the supervisor of every worker service (`tasks/runtime/cli.py`) at most
   once a second across all of them (`inkq:recovery:tick`, SET NX PX). In one atomic step it:
   - puts the claimed ids of dead workers back at the head of their queue, oldest first (a job no longer
     queued, e.g. canceled meanwhile, is dropped instead);
   - for each execution in a started registry whose worker is dead: removes the execution and what it stored
     (its outputs are never a result: deleted in the Redis store, made due for the blob sweep in S3); a job that
     never started is queued again at the head without using a retry; a started job with retries left is
     queued again at the head as a new attempt (its retry counter goes down by one); a job with none left
     is to be failed with `CRASH_FAILURE`, and a job its owner had asked to stop to be canceled: the
     script does not end them itself but leaves an entry in `inkq:ending` (`ENDING_KEY`), in the same
     step as the removal of the dead execution (the job's fencing token, `tasks/ending.py`). `drain`,
     run by every supervisor at each tick, ends each entry through the one end path (refund, input,
     webhook, metrics, announcement) in one transaction with the entry's removal, so a supervisor
     that dies between the script and the drain loses no end and no webhook;
   - forgets dead workers that hold nothing any more, in rq's worker registry too (a killed worker
     stayed listed for 7 minutes, counted by `/admin/queue-stats` and rq-dashboard);
   - moves due retries to their queue when the queue's rq scheduler is gone (its lock missing, or not
     renewed for 10 s). rq lets a dead scheduler's lock linger 61 s and lets a live worker take it
     over only at its next maintenance run (every 10 minutes), so a retry scheduled on a machine that
     died waited up to ten minutes.
   It returns the ids it left to end and counts what it did in `inkq:recovery:stats`.

Recovery time = liveness TTL (5 s) + at most one sweep interval (1 s), then a free worker's BLMOVE picks
the job at once. Running the sweep on several boxes at once is safe: it is one script, so each dead
execution is handled exactly once.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from rq.utils import now, utcformat

from .. import ending
from ..core import blobs, keys, logs, scripts
from ..core.errors import CRASH_FAILURE
from ..core.keys import ENDING_KEY, TICK_KEY
from ..core.queues import QUEUE_NAMES

log = logging.getLogger("inkq.recovery")

LIVENESS_EVERY_S = 1.0
SWEEP_EVERY_S = 1.0
# rq's scheduler renews its per-queue lock to 61 s every second; one not renewed for 10 s is dead.
SCHEDULER_STALE_MS = 51_000
FAILURE_TTL_S = 604800  # a swept job's record lives this long without a failure TTL of its own


RELEASE_OWN = scripts.load("release_own")  # run by a worker before each dequeue, with RELEASE_OWN_ARGS
RELEASE_OWN_ARGS = (keys.job_key(""), keys.RQ_QUEUES_KEY)
SWEEP = scripts.load("sweep")


def _name(fn) -> list[str]:
    """A key name built around a job id, execution, worker or queue, as the sweep's [prefix, suffix]."""
    return fn("\0").split("\0")


# Every key name the sweep builds, as tasks/core/keys.py spells it.
SWEEP_NAMES = json.dumps({
    "ending": ENDING_KEY, "stats": keys.STATS_KEY, "metrics": keys.METRICS_KEY, "channel": keys.CHANGES_CHANNEL,
    "rq_queues": keys.RQ_QUEUES_KEY, "rq_workers": keys.RQ_WORKERS_KEY,
    **{name: _name(fn) for name, fn in {
        "job": keys.job_key, "execution": keys.execution_key, "executions": keys.executions_key,
        "alive": keys.alive_key, "claims": keys.claims_key, "workers": keys.workers_key,
        "rq_worker": keys.rq_worker_key, "worker_executions": keys.worker_executions_key,
        "rq_queue_workers": keys.rq_queue_workers_key, "started": keys.started_key, "queue": keys.queue_key,
        "scheduler_lock": keys.scheduler_lock_key, "scheduled": keys.scheduled_key,
        # an execution's outputs, named around `<jobId>/<executionId>` (tasks.core.blobs.outputs_of)
        "output": blobs.output_key, "svg": blobs.svg_key}.items()}, "expiry": keys.BLOBS_EXPIRY_KEY})


@dataclass
class SweepResult:
    """What one sweep did."""

    ended: list = field(default_factory=list)  # [(jobId, "failed" | "canceled"), ...]
    counts: dict = field(default_factory=dict)

    @property
    def anything(self) -> bool:
        """Whether the sweep changed anything."""
        return any(self.counts.values())


class Recovery:
    """The sweep, bound to one Redis connection."""

    def __init__(self, redis, queues=QUEUE_NAMES):
        self.redis = redis
        self.queues = list(queues)
        self._sweep = redis.register_script(SWEEP)

    def sweep(self) -> SweepResult:
        """Run the sweep once, now, whatever the tick says."""
        raw = self._sweep(keys=[], args=[
            f"{time.time():.6f}", utcformat(now()), SCHEDULER_STALE_MS, SWEEP_NAMES, *self.queues])
        data = json.loads(raw)
        ended = [tuple(item) for item in (data.get("ended") or [])]
        return SweepResult(ended=ended, counts=data.get("counts") or {})

    def maybe_sweep(self, owner: str) -> SweepResult | None:
        """Sweep if no worker service has swept in the last `SWEEP_EVERY_S`; None if another one did."""
        if not self.redis.set(TICK_KEY, owner, nx=True, px=int(SWEEP_EVERY_S * 1000) - 50):
            return None
        result = self.sweep()
        if result.anything:
            log.warning("recovered jobs of dead workers: %s", {k: v for k, v in result.counts.items() if v})
        return result


def drain(redis) -> int:
    """End the jobs the sweep left in `ENDING_KEY` through the one end path (`tasks/ending.py`); the number
    ended. Run by every worker service's supervisor at each tick: an entry left by a supervisor that died
    after its sweep is ended by the next one (another service, or this one restarted)."""
    if not redis.hlen(ENDING_KEY):
        return 0
    from rq.exceptions import NoSuchJobError
    from rq.job import Job
    from rq.serializers import JSONSerializer

    done = 0
    for raw_id, raw_word in redis.hgetall(ENDING_KEY).items():
        job_id, word = raw_id.decode(), raw_word.decode()
        try:
            job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        except NoSuchJobError:
            redis.hdel(ENDING_KEY, job_id)
            continue
        with logs.bound(jobId=job_id, queue=job.origin, userId=job.meta.get("user"),
                        requestId=job.meta.get("requestId")):
            if end_swept(redis, job, word):
                ending.drop_input_now(blobs.store(redis), job_id)
                done += 1
            else:
                redis.hdel(ENDING_KEY, job_id)  # it had ended otherwise, or another drain ended it
    return done


def end_swept(redis, job, word: str) -> bool:
    """End one job of a dead worker as the sweep decided: failed with `CRASH_FAILURE`, or canceled when its
    owner had asked it to stop. Its entry goes in the same transaction as its end."""
    def entry_stands(pipe) -> bool:
        pipe.watch(ENDING_KEY, job.key)
        return bool(pipe.hexists(ENDING_KEY, job.id)) and not ending.ended(pipe, job.id)

    def writes(pipe) -> None:
        ttl = int(job.failure_ttl or FAILURE_TTL_S)
        job.meta["stage"] = word
        if word == "canceled":
            job.meta["canceled"] = True
            status, registry = "stopped", keys.canceled_key(job.origin)
        else:
            job.meta["error"] = CRASH_FAILURE
            status, registry = "failed", keys.failed_key(job.origin)
        pipe.hset(job.key, mapping={"status": status, "ended_at": utcformat(now()), "meta": job._serialize_meta()})
        pipe.zadd(registry, {job.id: time.time() + ttl})
        if ttl > 0:
            pipe.expire(job.key, ttl)
        pipe.hdel(ENDING_KEY, job.id)
    return ending.finish(redis, ending.Ending(job, word, "sweep"), writes, entry_stands)
