"""Erasure: everything inkq holds of one job, or of one user, deleted now; and each job's `retentionS`.

The inputs are customers' photographs (skin, faces, tattoos), personal data under the LGPD and the GDPR,
which give a right to erasure. Three ways in:

- `DELETE /jobs/<jobId>/data` (the owner) and `DELETE /admin/users/<userId>/data` (an operator), in the API
  (`api/store.py`), which calls `erase_job` for each job and `erase_user` for the user's own keys;
- the retention sweep (`sweep_retention`, run by the worker services beside the recovery sweep): a job
  submitted with `retentionS` is entered in `RETENTION_KEY` by its final end (`tasks/ending.py`'s
  `Retention` hook) and erased that long after.

**What a job and a user leave, in one place.** `JOB_DATA` lists, one line each, the functions that name what
Redis holds of a job (`Gone`: its id, owner, queue, meta, parameters, return value, executions) as `Drop`s: a
key to delete, or a member to remove from a structure shared with other jobs. `USER_DATA` does the same for
a user's own keys. A structure added elsewhere (an index, a per-job key) is one more line here;
`tests/test_erasure.py` scans every Redis key and every object of the bucket for the ids after an erasure,
so a structure left out is found there. Images are deleted through the blob store (`blob_keys`: the input,
every execution's outputs), in Redis or in the bucket.

**Order for a job.**
1. One that has not ended is ended first, through the one end path (`tasks/ending.py`), so every end hook
   runs as for any cancel (its credit refunded, its input dropped, ...). The API asks as a cancel does (a
   waiting job is canceled; an active one is stopped by its worker: `api/store.py`); one still not ended
   after that (its worker frozen or lost) is ended here (`end_now`), and its executions are removed in that
   end's transaction. That removal fences its worker out: every later write of that worker is refused
   (its end in `tasks/ending.py`, its meta `save_meta.lua`, its start `job_start.lua`, its heartbeat
   `heartbeat.lua`; the outputs of an execution that did not complete are deleted by whoever ends it,
   `tasks/runtime/worker.py`, `tasks/runtime/slots.py`, the recovery sweep), so nothing it writes later
   brings the job back.
2. Its records go in one transaction, watched (a concurrent write makes it start again), with an
   announcement: API processes drop a cached status and open event streams end.
3. Then its images: deleted in the Redis store; in the S3 store listed by their job's prefixes (so the
   outputs of every execution are found) and deleted, with their expiry entries.

A pending webhook delivery of the job is deleted with it (its rq job's id is the job's,
`tasks.webhooks.delivery_id`): an erased job is not reported.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from redis.exceptions import WatchError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from . import ending, webhooks
from .core import blobs as blob_store
from .core import changes, credits, keys
from .core.queues import QUEUE_NAMES

log = logging.getLogger("inkq.erasure")

SWEEP_BATCH = 50  # jobs erased per retention sweep: a bounded share of a supervisor's second

Drop = tuple  # ("del", key) | ("zrem" | "srem" | "lrem" | "hdel", key, member)


@dataclass
class RqJob:
    """One rq job of an erased job (the job itself, or its webhook delivery) and its executions."""

    id: str
    queue: str | None
    executions: list[tuple[str, str | None]] = field(default_factory=list)  # (execution id, its worker)


@dataclass
class Gone:
    """What is known of a job being erased: enough to name every key and entry it left."""

    id: str
    user: str | None = None
    queue: str | None = None
    meta: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # the submission's parameters (the job's spec)
    value: dict = field(default_factory=dict)  # the return value of a completed job
    rq: list[RqJob] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)  # the workers of its queue (their claims)


# --- what a job leaves: one function per structure ------------------------------------------------------------

def rq_records(reader, gone: Gone) -> list[Drop]:
    """The job's rq hash, results, executions, dependents and its place in its queue and registries; the same of
    its webhook delivery."""
    drops: list[Drop] = []
    for job in gone.rq:
        drops += [("del", Job.key_for(job.id)), ("del", Result.get_key(job.id)), ("del", keys.executions_key(job.id)),
                  ("del", Job.dependents_key_for(job.id)),
                  ("del", f"{Job.redis_job_namespace_prefix}:{job.id}:dependencies")]  # rq 3.0 spells it so
        if job.queue:
            drops.append(("lrem", keys.queue_key(job.queue), job.id))
            drops += [("zrem", keys.registry_key(kind, job.queue), job.id) for kind in keys.RQ_REGISTRIES]
        for execution, worker in job.executions:
            member = f"{job.id}:{execution}"
            drops.append(("del", keys.execution_key(member)))
            if job.queue:
                drops.append(("zrem", keys.started_key(job.queue), member))
            if worker:
                drops.append(("srem", keys.worker_executions_key(worker), member))
    return drops


def claims(reader, gone: Gone) -> list[Drop]:
    """A worker's claim on the job (taken off its queue, not started)."""
    return [("lrem", keys.claims_key(worker), gone.id) for worker in gone.workers]


def listing(reader, gone: Gone) -> list[Drop]:
    """Its place in its owner's job index and in-flight set."""
    if not gone.user:
        return []
    return [("zrem", keys.user_index_key(gone.user), gone.id), ("srem", credits.inflight_key(gone.user), gone.id)]


def credit_records(reader, gone: Gone) -> list[Drop]:
    """A charge still pending (settled by its end before this) and the admission mark."""
    return [("del", credits.charge_key(gone.id)), ("del", credits.admitting_key(gone.id))]


def idempotency(reader, gone: Gone) -> list[Drop]:
    """The `Idempotency-Key` record that answers with this job (not one a later job took over)."""
    record = gone.meta.get("idempotency")
    if not record:
        return []
    raw = reader.get(record)
    try:
        answer = json.loads(raw).get("answer", {}) if raw else {}
    except ValueError:
        answer = {}
    drops: list[Drop] = [("zrem", keys.idempotency_index_key(gone.user), record)] if gone.user else []
    return drops + ([("del", record)] if answer.get("jobId") == gone.id else [])


def upload(reader, gone: Gone) -> list[Drop]:
    """The record of the direct upload the job used (it names the job). Its object went when the job was
    queued; the upload key's expiry entry stays until its form has expired (`api/uploads.py`), naming only
    the upload."""
    upload_id = gone.params.get("upload")
    if not upload_id:
        return []
    record = keys.upload_record_key(upload_id)
    drops: list[Drop] = [("zrem", keys.user_uploads_key(gone.user), upload_id)] if gone.user else []
    used_by = reader.hget(record, "job")
    return drops + ([("del", record)] if used_by in (None, gone.id.encode()) else [])


def pending_end(reader, gone: Gone) -> list[Drop]:
    """An end the recovery sweep left to do (`tasks/runtime/recovery.py`)."""
    return [("hdel", keys.ENDING_KEY, gone.id)]


def retention(reader, gone: Gone) -> list[Drop]:
    """Its retention deadline."""
    return [("zrem", keys.RETENTION_KEY, gone.id)]


def start_deadline(reader, gone: Gone) -> list[Drop]:
    """Its start deadline (`maxWaitS`; its end removed it: `tasks/ending.py`'s `Deadline` hook)."""
    return [("zrem", keys.deadlines_key(), gone.id)]


JOB_DATA: list[Callable[[object, Gone], list[Drop]]] = [
    rq_records,
    claims,
    listing,
    credit_records,
    idempotency,
    upload,
    pending_end,
    retention,
    start_deadline,
    # its place in its queue's fair order left with its end (`tasks/ending.py`'s `Fairness` hook)
]


def blob_keys(gone: Gone) -> list[str]:
    """The image keys of a job: its input, the outputs its return value names, and those of jobs stored before
    outputs were kept per execution."""
    named = [gone.value.get("outputKey"), gone.value.get("svgKey")]
    found = [blob_store.input_key(gone.id), blob_store.output_key(gone.id), blob_store.svg_key(gone.id)]
    return list(dict.fromkeys([*found, *(key for key in named if isinstance(key, str) and key)]))


def blob_prefixes(gone: Gone) -> list[str]:
    """Key prefixes under which every image of the job lives, whatever its execution (the S3 store lists them)."""
    return [blob_store.input_key(gone.id), blob_store.output_key(gone.id), blob_store.svg_key(gone.id)]


# --- what a user leaves -----------------------------------------------------------------------------------------

def user_records(reader, user_id: str) -> list[Drop]:
    """The user's job index, in-flight set, credit balance and stream leases."""
    return [("del", keys.user_index_key(user_id)), ("del", keys.inflight_key(user_id)),
            ("del", credits.balance_key(user_id)), ("del", keys.stream_leases_key(user_id))]


def user_idempotency(reader, user_id: str) -> list[Drop]:
    """Every `Idempotency-Key` record of the user, and their index."""
    index = keys.idempotency_index_key(user_id)
    return [("del", raw.decode()) for raw in reader.zrange(index, 0, -1)] + [("del", index)]


def user_uploads(reader, user_id: str) -> list[Drop]:
    """The records of every upload of the user, used or not, and both indexes (their objects: `erase_user`)."""
    return [("del", keys.upload_record_key(upload_id)) for upload_id in uploads_of(reader, user_id)] + [
        ("del", keys.open_uploads_key(user_id)), ("del", keys.user_uploads_key(user_id))]


def user_fair_order(reader, user_id: str) -> list[Drop]:
    """The user's last turn and waiting count in each queue's fair order (`tasks/core/fairness.py`)."""
    return [drop for queue in QUEUE_NAMES for drop in (("zrem", keys.fair_users_key(queue), user_id),
                                                         ("hdel", keys.fair_waiting_key(queue), user_id))]


def user_quota(reader, user_id: str) -> list[Drop]:
    """The user's places and turns in the provider's budget (`tasks/quota.py`: members `<user>` or `<user> <call>`)."""
    drops: list[Drop] = []
    for pattern in (keys.gemini_served_key("*"), keys.gemini_waiting_key("*"), keys.gemini_calls_key("*")):
        for key in reader.scan_iter(match=pattern, count=1000):
            for member in reader.zrange(key, 0, -1):
                text = member.decode(errors="replace")
                if text == user_id or text.startswith(user_id + " "):
                    drops.append(("zrem", key.decode(), text))
    return drops


USER_DATA: list[Callable[[object, str], list[Drop]]] = [
    user_records,
    user_idempotency,
    user_uploads,
    user_fair_order,
    user_quota,
]


def uploads_of(reader, user_id: str) -> list[str]:
    """The ids of the user's uploads still on record (used, refused or open)."""
    found = {raw.decode() for key in (keys.user_uploads_key(user_id), keys.open_uploads_key(user_id))
             for raw in reader.zrange(key, 0, -1)}
    return sorted(found)


# --- the erasure -------------------------------------------------------------------------------------------------

def apply(pipe, drops: list[Drop]) -> None:
    """Add the drops' commands to a pipeline."""
    for drop in drops:
        kind, key = drop[0], drop[1]
        if kind == "del":
            pipe.delete(key)
        elif kind == "zrem":
            pipe.zrem(key, drop[2])
        elif kind == "srem":
            pipe.srem(key, drop[2])
        elif kind == "lrem":
            pipe.lrem(key, 0, drop[2])
        elif kind == "hdel":
            pipe.hdel(key, drop[2])
        else:
            raise ValueError(f"unknown drop {kind!r}")


def fetch(redis, job_id: str) -> Job | None:
    """The rq job, or None when its hash is gone."""
    try:
        return Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def end_now(redis, job: Job, by: str) -> bool:
    """End, as canceled, a job that has not ended, through the one end path; its executions are removed in the
    same transaction, so its worker (frozen, lost, or about to start it) is fenced out. False if it had ended."""
    def not_ended(pipe) -> bool:
        pipe.watch(job.key, keys.executions_key(job.id))
        return bool(pipe.exists(job.key)) and not ending.ended(pipe, job.id)

    def writes(pipe) -> None:
        job.meta["canceled"] = True
        job.meta.setdefault("canceledAt", utcformat(now())[:23] + "Z")
        pipe.hset(job.key, mapping={"status": "stopped", "ended_at": utcformat(now()), "meta": job._serialize_meta()})
        pipe.delete(keys.executions_key(job.id))
    return ending.finish(redis, ending.Ending(job, "canceled", by), writes, not_ended)


def _executions(reader, job_id: str, queue: str | None) -> list[tuple[str, str | None]]:
    ids = {raw.decode() for raw in reader.zrange(keys.executions_key(job_id), 0, -1)}
    if queue:
        prefix = f"{job_id}:".encode()
        ids |= {raw[len(prefix):].decode() for raw in reader.zrange(keys.started_key(queue), 0, -1)
                if raw.startswith(prefix)}
    found = []
    for execution in sorted(ids):
        worker = reader.hget(keys.execution_key(f"{job_id}:{execution}"), "worker_name")
        found.append((execution, worker.decode() if worker else None))
    return found


def gather(reader, redis, job_id: str) -> Gone:
    """What is known of a job now (its hash may be gone: then only what its id names)."""
    job = fetch(redis, job_id)
    gone = Gone(job_id)
    if job is not None:
        gone.meta = dict(job.meta or {})
        gone.user = gone.meta.get("user")
        gone.queue = job.origin
        try:
            spec = job.args[0] if job.args else {}
        except Exception:  # noqa: BLE001 - an unreadable payload: what the id names is still erased
            spec = {}
        gone.params = dict(spec.get("params") or {}) if isinstance(spec, dict) else {}
        value = job.return_value()
        gone.value = value if isinstance(value, dict) else {}
    gone.rq = [RqJob(job_id, gone.queue, _executions(reader, job_id, gone.queue))]
    delivery = webhooks.delivery_id(job_id)
    gone.rq.append(RqJob(delivery, webhooks.QUEUE, _executions(reader, delivery, webhooks.QUEUE)))
    queues = [gone.queue] if gone.queue else list(QUEUE_NAMES)
    gone.workers = sorted({raw.decode() for queue in [*queues, webhooks.QUEUE]
                           for raw in reader.smembers(keys.workers_key(queue))})
    return gone


def erase_job(redis, blobs, job_id: str, by: str) -> tuple[bool, int]:
    """Erase a job now: ended first if it has not (`end_now`), then every record, entry and image of it.
    (whether its record existed, the number of image objects deleted). Idempotent."""
    job = fetch(redis, job_id)
    existed = job is not None
    if job is not None and job.get_status(refresh=True) not in ("finished", "failed", "stopped", "canceled"):
        end_now(redis, job, by)
    gone = gather(redis, redis, job_id)
    # the images first: a store that does not answer raises StorageUnavailable with the records still there,
    # so the erasure can be asked again and finds everything
    objects = blobs.erase(blob_keys(gone), blob_prefixes(gone))
    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(Job.key_for(job_id), keys.executions_key(job_id))
                gone = gather(pipe, redis, job_id)
                drops = [drop for found in JOB_DATA for drop in found(pipe, gone)]
                pipe.multi()
                apply(pipe, drops)
                pipe.publish(changes.CHANNEL, job_id)  # caches drop it, event streams on it end
                pipe.execute()
                break
            except WatchError:
                continue
    return existed, objects


def jobs_of(redis, user_id: str) -> list[str]:
    """The ids of a user's jobs: their index and in-flight set and, when the index is full (it keeps the newest
    `keys.INDEX_CAP`), every job of Redis whose owner they are."""
    ids = {raw.decode() for raw in redis.zrange(keys.user_index_key(user_id), 0, -1)}
    ids |= {raw.decode() for raw in redis.smembers(credits.inflight_key(user_id))}
    if len(ids) >= keys.INDEX_CAP:
        ids |= set(_scan_owned(redis, user_id))
    return sorted(ids)


def _scan_owned(redis, user_id: str) -> list[str]:
    found = []
    batch: list[bytes] = []

    def check() -> None:
        with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.hget(key, "meta")
            for key, raw in zip(batch, pipe.execute()):
                try:
                    if raw and json.loads(raw).get("user") == user_id:
                        found.append(key.decode().removeprefix(Job.redis_job_namespace_prefix))
                except ValueError:
                    continue
        batch.clear()

    for key in redis.scan_iter(match=Job.key_for("*"), count=1000, _type="hash"):
        batch.append(key)
        if len(batch) >= 500:
            check()
    check()
    return found


def erase_user(redis, blobs, user_id: str) -> int:
    """Erase a user's own keys (after their jobs, `erase_job`): index, in-flight set, balance, stream leases,
    idempotency records, uploads (records and objects) and places in the provider's budget; the number of
    image objects deleted (unused uploads)."""
    objects = 0
    for upload_id in uploads_of(redis, user_id):  # the objects first, as for a job
        key = blob_store.upload_key(upload_id)
        objects += blobs.erase([key], [key])
    drops = [drop for found in USER_DATA for drop in found(redis, user_id)]
    with redis.pipeline() as pipe:
        apply(pipe, drops)
        pipe.execute()
    return objects


def sweep_retention(redis, blobs, limit: int = SWEEP_BATCH) -> int:
    """Erase up to `limit` jobs whose retention has run out; how many."""
    due = [raw.decode() for raw in redis.zrangebyscore(keys.RETENTION_KEY, "-inf", time.time(), start=0, num=limit)]
    for job_id in due:
        erase_job(redis, blobs, job_id, "retention")
    if due:
        log.info("retention sweep erased %d jobs", len(due))
    return len(due)
