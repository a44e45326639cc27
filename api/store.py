"""Jobs as the API sees them: enqueue by dotted name, fetch with ownership, list, cancel.

A job carries ids, keys and parameters only; image bytes go to the blob store (`tasks.core.blobs`): into
the same Redis transaction as the job with the Redis store, or written to S3 just before it (a write
that fails raises `StorageUnavailable` and nothing is queued; an object left by a failed transaction
is deleted by the blob sweep when it is due). Each user has an index (sorted set by creation time)
that serves `GET /jobs` and expires with the jobs. It keeps the user's newest `INDEX_CAP` jobs
(trimmed in the enqueue transaction), so it is bounded however long the user's history; older jobs
stay readable by id until they expire, but are no longer listed.

A job canceled while waiting is given its failure TTL and an expiring entry in the canceled registry
(`expire_canceled`): rq 3.0.0's `Job.cancel()` leaves the job's hash with no TTL and adds it to
`CanceledJobRegistry` scored with the time of cancellation, and rq never cleans that registry
(its `cleanup` is the base class's no-op and `clean_registries` skips it), so every canceled job
stayed for ever (4.2 KB each: 2,500 submit-and-cancel rounds kept 10.4 MiB).

`GET /jobs` reads at most `LIST_WINDOW` index entries per request, whatever the user's history: a
`status` filter looks among the user's newest `LIST_WINDOW` jobs only. It used to walk the whole
index until `limit` matches were found: 2,505 jobs cost 2,504 job reads for one request.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import CanceledJobRegistry
from rq.serializers import JSONSerializer

from tasks import ending, erasure
from tasks.core import blobs as blob_store
from tasks.core import credits, deadlines, fairness
from tasks.core.keys import INDEX_CAP, RETENTION_GRACE_S, deadlines_key, user_index_key
from tasks.core.queues import QUEUES, QueueSpec

from .status import ACTIVE, CANCELED, TERMINAL, WAITING, View, read, read_many, word_of

_ID_CHARS = frozenset("0123456789abcdef")
LIST_WINDOW = 200
STOP_WAIT_S = 5.0  # how long a cancel (or an erasure) waits for an active job's worker to stop it


def valid_job_id(job_id: str) -> bool:
    """Job ids are 32 lowercase hex characters; anything else is unknown without touching Redis."""
    return len(job_id) == 32 and set(job_id) <= _ID_CHARS


def new_job_id() -> str:
    """A fresh random job id."""
    return uuid.uuid4().hex


def queue_for(redis: Redis, spec: QueueSpec) -> Queue:
    """The RQ queue of an operation, JSON-serialized."""
    return Queue(spec.name, connection=redis, serializer=JSONSerializer)


class JobStore:
    """RQ jobs plus the per-user index."""

    def __init__(self, redis: Redis, result_ttl_s: int, failure_ttl_s: int, blobs=None):
        self.redis = redis
        self.blobs = blobs if blobs is not None else blob_store.RedisBlobs(redis)
        self.result_ttl_s = result_ttl_s
        self.failure_ttl_s = failure_ttl_s
        # One Queue per queue, made once: rq's constructor checks its serializer against a runtime
        # Protocol, tens of microseconds each time on Python 3.11 (a few percent of a submit).
        self._queues = {spec.name: queue_for(redis, spec) for spec in QUEUES.values()}

    def input_ttl_s(self, operation: str) -> int:
        """How long a job's input is kept: past its last possible retry and its failure's record."""
        spec = QUEUES[operation]
        return self.failure_ttl_s + spec.timeout_s * (spec.max_retries + 1)

    def enqueue(self, job_id: str, user_id: str, operation: str, params: dict,
                image: bytes | None, mime_type: str | None, request_id: str | None = None,
                input_stored: bool = False, also=None, weight: int = 1, max_wait_s: int | None = None,
                idempotency: str | None = None) -> Job:
        """Store the input bytes (unless `input_stored`: a direct upload already copied to the job's
        input key and checked there) and queue the job in one transaction; the job keeps the
        submitting request's id. The same transaction enters the job in its queue's fair order with
        its user's `weight` (`tasks.core.fairness`); the job's place then is `job.place`
        (a `fairness.Place`).

        `also(pipeline)` adds writes that must land with the job (the Idempotency-Key's record, whose key name
        is `idempotency`: kept in the job's meta, so that erasing the job finds it). `weight`: the user's plan's
        weight in the fair order (`api/plans.py`). `max_wait_s`: the start deadline (`tasks/core/deadlines.py`),
        written into the job's meta and the deadlines set in the same transaction. A job submitted with
        `retentionS` keeps it in its meta (its end enters it in the retention set, `tasks/ending.py`) and its rq
        records expire `RETENTION_GRACE_S` after that."""
        deadline = deadlines.meta_of(max_wait_s) if max_wait_s else {}
        spec = QUEUES[operation]
        keep_for = params.get("retentionS")
        result_ttl = failure_ttl = keep_for + RETENTION_GRACE_S if keep_for else None
        keep_s = self.input_ttl_s(operation)
        input_key = blob_store.input_key(job_id) if image is not None or input_stored else None
        job_spec = {"jobId": job_id, "operation": operation, "userId": user_id, "inputKey": input_key,
                    "mimeType": mime_type, "params": params}
        # a retry goes back at the head of the list: the turn its failed attempt took is given back at once, and
        # an id at the head outside the fair order is the next taken (`tasks.core.fairness`)
        retry = (Retry(max=spec.max_retries, interval=[2, 4, 8][: spec.max_retries], enqueue_at_front=True)
                 if spec.max_retries else None)
        with self.redis.pipeline() as pipe:
            job = self._queues[spec.name].enqueue(
                spec.function, job_spec, job_id=job_id, job_timeout=spec.timeout_s,
                result_ttl=result_ttl or self.result_ttl_s, failure_ttl=failure_ttl or self.failure_ttl_s, retry=retry,
                meta={"user": user_id, "operation": operation, "progress": 0, "attempts": 0, "requestId": request_id,
                      **({"webhook": {"state": "waiting", "attempts": 0}} if params.get("webhookUrl") else {}),
                      **deadline,
                      **({"retentionS": keep_for} if keep_for else {}),
                      **({"idempotency": idempotency} if idempotency else {})},
                description=f"{operation} for {user_id}", pipeline=pipe)
            if image is not None:
                self.blobs.save(input_key, image, keep_s, mime_type, pipeline=pipe)
            index = user_index_key(user_id)
            pipe.zadd(index, {job_id: time.time()})
            pipe.zremrangebyrank(index, 0, -INDEX_CAP - 1)
            pipe.expire(index, max(self.result_ttl_s, self.failure_ttl_s))
            pipe.delete(credits.admitting_key(job_id))
            if deadline:
                pipe.zadd(deadlines_key(), {job_id: deadline["deadline"]})
            placed = fairness.enqueue_in(pipe, spec.name, job_id, user_id, weight)
            if also is not None:
                also(pipe)
            replies = pipe.execute()
        job.place = fairness.Place.of(replies[placed])
        return job

    def fetch_any(self, job_id: str) -> Job | None:
        """The job with this id, whoever owns it (callers must have proved the right to it)."""
        if not valid_job_id(job_id):
            return None
        try:
            return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def fetch(self, job_id: str, user_id: str) -> Job | None:
        """The job if it exists and belongs to user_id; None otherwise (the two are not told apart)."""
        job = self.fetch_any(job_id)
        if job is None or job.meta.get("user") != user_id:
            return None
        return job

    def view(self, job_id: str, user_id: str) -> View | None:
        """The job's view (one round trip) if it exists and belongs to user_id; None otherwise."""
        if not valid_job_id(job_id):
            return None
        view = read(self.redis, job_id)
        return view if view is not None and view.user == user_id else None

    def list(self, user_id: str, limit: int, status: str | None = None) -> list[View]:
        """The user's jobs, newest first, optionally only those with one status word (among the newest
        `LIST_WINDOW`)."""
        index = user_index_key(user_id)
        found: list[View] = []
        start, page, examined = 0, max(limit, 50), 0
        while len(found) < limit and examined < LIST_WINDOW:
            count = min(page, LIST_WINDOW - examined)
            ids = [i.decode() if isinstance(i, bytes) else i for i in self.redis.zrevrange(index, start, start + count - 1)]
            examined += len(ids)
            if not ids:
                break
            views = read_many(self.redis, ids)
            gone = [job_id for job_id, view in zip(ids, views) if view is None]
            if gone:
                self.redis.zrem(index, *gone)
                start -= len(gone)
            for view in views:
                if view is not None and view.user == user_id and (status is None or view.word == status):
                    found.append(view)
            start += count
        return found[:limit]

    def past_deadline(self, view: View | None, webhook_retry_s: tuple | None = None) -> View | None:
        """`view`, or, when it shows a job waiting past its start deadline, the view after ending that job
        (`tasks.ending.expire`: canceled, refunded). The caller has checked that the reader owns the job."""
        if view is None or view.word != WAITING or not deadlines.is_due(view.meta):
            return view
        job = self.fetch_any(view.id)
        if job is None:
            return None
        if ending.expire(self.redis, job, webhook_retry_s=webhook_retry_s):
            ending.drop_input_now(self.blobs, job.id)
        return read(self.redis, view.id)

    def expire_canceled(self, job: Job, pipe) -> None:
        """Let a canceled job expire after its failure TTL, scored so in the canceled registry (as the recovery
        sweep does), and drop that registry's entries whose jobs have expired."""
        ttl = job.failure_ttl or self.failure_ttl_s
        registry = CanceledJobRegistry(job.origin, connection=self.redis, serializer=JSONSerializer).key
        now = time.time()
        pipe.expire(job.key, ttl)
        pipe.zadd(registry, {job.id: now + ttl})
        pipe.zremrangebyscore(registry, "-inf", now)

    def cancel_waiting(self, job: Job, webhook_retry_s: tuple | None = None) -> bool:
        """End a job that still waits as canceled, through the one end path (`tasks/ending.py`: refund, input,
        webhook, metrics and announcement in the same transaction); False if it no longer waits."""
        def still_waiting(pipe) -> bool:
            pipe.watch(job.key)
            return pipe.hget(job.key, "status") in (b"queued", b"scheduled", b"deferred")

        def writes(pipe) -> None:
            job.cancel(pipeline=pipe)
            self.expire_canceled(job, pipe)
        try:
            done = ending.finish(self.redis, ending.Ending(job, "canceled", "api", webhook_retry_s=webhook_retry_s), writes, still_waiting)
        except InvalidJobOperation:
            return False
        if done:
            ending.drop_input_now(self.blobs, job.id)
        return done

    def cancel(self, job: Job, wait_s: float = STOP_WAIT_S, webhook_retry_s: tuple | None = None) -> str | None:
        """Cancel a waiting job ("canceled") or stop an active one ("stopped", ended by its worker); None if
        it had ended."""
        if word_of(job, refresh=True) in TERMINAL:
            return None
        how = self._ask_to_cancel(job, webhook_retry_s)
        self._await_stops([job], wait_s)
        return how if word_of(job, refresh=True) == CANCELED else None

    def _ask_to_cancel(self, job: Job, webhook_retry_s: tuple | None) -> str:
        """Mark the job canceled; end it now if it waits ("canceled"), else its worker stops it ("stopped")."""
        job.meta["canceledAt"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        job.save_meta()
        if word_of(job, refresh=True) == WAITING and self.cancel_waiting(job, webhook_retry_s):
            return "canceled"
        return "stopped"

    def _await_stops(self, jobs: list[Job], wait_s: float) -> None:
        """Ask the workers of the active jobs to stop them (once a second) until none is active, or wait_s."""
        deadline = time.monotonic() + wait_s
        next_stop = 0.0
        while time.monotonic() < deadline:
            active = [job for job in jobs if word_of(job, refresh=True) == ACTIVE]
            if not active:
                return
            if time.monotonic() >= next_stop:  # once, then again only if still running a second later
                for job in active:
                    try:
                        send_stop_job_command(self.redis, job.id, serializer=JSONSerializer)
                    except (InvalidJobOperation, NoSuchJobError):
                        pass
                next_stop = time.monotonic() + 1.0
            time.sleep(0.05)

    def erase(self, job: Job, by: str, webhook_retry_s: tuple | None = None) -> int:
        """Erase a job now (`DELETE /jobs/<jobId>/data`): canceled first if it has not ended, as by `cancel` (an
        active one stopped by its worker, or ended by `tasks.erasure` when its worker does not answer in
        time), then every record and image of it deleted (`tasks/erasure.py`); the image objects deleted."""
        if word_of(job, refresh=True) not in TERMINAL:
            self.cancel(job, webhook_retry_s=webhook_retry_s)
        return erasure.erase_job(self.redis, self.blobs, job.id, by)[1]

    def erase_user(self, user_id: str, webhook_retry_s: tuple | None = None) -> tuple[list[str], int]:
        """Erase everything of a user (`DELETE /admin/users/<userId>/data`): each of their jobs as `erase` (the
        ones still running stopped together), then their own keys (`tasks.erasure.erase_user`). (the ids of the
        jobs erased, the image objects deleted)."""
        jobs = [job for job in (self.fetch(job_id, user_id) for job_id in erasure.jobs_of(self.redis, user_id)) if job]
        live = [job for job in jobs if word_of(job, refresh=True) not in TERMINAL]
        for job in live:
            self._ask_to_cancel(job, webhook_retry_s)
        self._await_stops(live, STOP_WAIT_S)
        objects = sum(erasure.erase_job(self.redis, self.blobs, job.id, "admin")[1] for job in jobs)
        return [job.id for job in jobs], objects + erasure.erase_user(self.redis, self.blobs, user_id)
