"""What a worker writes after its job was erased, or taken from it, is refused or deleted, so an erased job never
comes back (tasks/erasure.py): its start (`job_start.lua`), its supervisor's heartbeat (`heartbeat.lua`) and its
meta writes (`save_meta.lua`) are fenced by its execution and by the job's existence, as its end is
(tasks/ending.py); and what a dead execution stored is deleted by the recovery sweep. On a real Redis, with
the records as rq 3.0 writes them."""
from __future__ import annotations

import time
import uuid

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from tasks.core import blobs, keys, scripts
from tasks.core.changes import EXECUTION_ATTR, save_meta_and_announce


@pytest.fixture
def running(redis):
    """A job an execution is running: its hash, its executions, the execution's record and started entry."""
    job_id, execution = uuid.uuid4().hex, uuid.uuid4().hex
    queue = "ia-gen"
    job = Job.create("tasks.jobs.ia_gen", args=[{"jobId": job_id}], id=job_id, connection=redis, origin=queue,
                     serializer=JSONSerializer, meta={"user": "u"})
    job.save()
    redis.hset(Job.key_for(job_id), "status", "queued")
    redis.zadd(keys.executions_key(job_id), {execution: time.time() + 100})
    redis.hset(keys.execution_key(f"{job_id}:{execution}"), mapping={"worker_name": "w", "last_heartbeat": 0})
    redis.zadd(keys.started_key(queue), {f"{job_id}:{execution}": time.time() + 100})
    return job_id, execution, queue


def erase(redis, job_id: str, execution: str, queue: str) -> None:
    """What an erasure deletes of these records."""
    redis.delete(Job.key_for(job_id), keys.executions_key(job_id), keys.execution_key(f"{job_id}:{execution}"))
    redis.zrem(keys.started_key(queue), f"{job_id}:{execution}")


def names(redis, job_id: str) -> list[str]:
    return sorted(k.decode() for k in redis.scan_iter(match=f"*{job_id}*"))


def start(redis, job_id: str, execution: str) -> int:
    return redis.eval(scripts.load("job_start"), 2, Job.key_for(job_id), keys.executions_key(job_id), execution,
                      "2026-01-01T00:00:00.000000Z", "w")


def beat(redis, job_id: str, execution: str, queue: str) -> int:
    return redis.eval(scripts.load("heartbeat"), 4, Job.key_for(job_id), keys.executions_key(job_id),
                      keys.execution_key(f"{job_id}:{execution}"), keys.started_key(queue), execution,
                      f"{job_id}:{execution}", 90, time.time(), "2026-01-01T00:00:00.000000Z")


def test_an_owned_start_and_heartbeat_are_written(redis, running):
    job_id, execution, queue = running
    redis.expire(Job.key_for(job_id), 600)
    assert start(redis, job_id, execution) == 1
    assert redis.hget(Job.key_for(job_id), "status") == b"started" and redis.ttl(Job.key_for(job_id)) == -1
    assert beat(redis, job_id, execution, queue) == 1
    assert redis.hget(Job.key_for(job_id), "last_heartbeat") == b"2026-01-01T00:00:00.000000Z"
    assert 0 < redis.ttl(keys.execution_key(f"{job_id}:{execution}")) <= 90
    assert redis.zscore(keys.started_key(queue), f"{job_id}:{execution}") >= int(time.time()) + 89


def test_an_erased_jobs_worker_writes_nothing(redis, running):
    job_id, execution, queue = running
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    erase(redis, job_id, execution, queue)
    assert start(redis, job_id, execution) == 0
    assert beat(redis, job_id, execution, queue) == 0
    setattr(job, EXECUTION_ATTR, execution)
    assert save_meta_and_announce(job) is False
    setattr(job, EXECUTION_ATTR, None)  # a writer with no execution (a webhook's state, the API) too
    assert save_meta_and_announce(job) is False
    assert names(redis, job_id) == []


def test_a_job_ended_elsewhere_is_not_started_again(redis, running):
    job_id, execution, queue = running
    redis.hset(Job.key_for(job_id), "status", "canceled")
    assert start(redis, job_id, execution) == 0
    assert redis.hget(Job.key_for(job_id), "status") == b"canceled"
    redis.hset(Job.key_for(job_id), "status", "queued")
    redis.zrem(keys.executions_key(job_id), execution)  # taken from this execution (the sweep, an erasure)
    assert start(redis, job_id, execution) == 0 and beat(redis, job_id, execution, queue) == 0
    assert redis.hget(Job.key_for(job_id), "status") == b"queued"


def test_the_sweep_deletes_what_a_dead_execution_stored(redis, running):
    from tasks.runtime.recovery import Recovery

    job_id, execution, queue = running
    redis.hset(Job.key_for(job_id), mapping={"status": "started", "retries_left": 1})
    redis.sadd(keys.workers_key(queue), "w")  # listed, and without a liveness key: dead
    stored = [key for key in blobs.outputs_of(job_id, execution)]
    for key in stored:
        redis.set(key, b"png", ex=600)
    redis.zadd(blobs.EXPIRY_KEY, {stored[0]: time.time() + 600})  # the S3 store's entry
    Recovery(redis, [queue]).sweep()
    assert redis.exists(*stored) == 0
    assert redis.zscore(blobs.EXPIRY_KEY, stored[0]) == 0  # due now: the blob sweep deletes the object
    assert redis.hget(Job.key_for(job_id), "status") == b"queued"  # queued again as a new attempt
    redis.zrem(blobs.EXPIRY_KEY, stored[0])
    redis.lrem(keys.queue_key(queue), 0, job_id)
