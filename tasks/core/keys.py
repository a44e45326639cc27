"""Redis key names in one module, as rq keeps its own in `rq/keys.py`: a reader greps one file for a key.

`LIVENESS_TTL_MS`, the lifetime of a worker's `alive_key`, stands beside it: every reader of that key
(the recovery sweep, the queue gauges) judges a worker by it.
"""
from __future__ import annotations

import hashlib

LIVENESS_TTL_MS = 5000
TICK_KEY = "inkq:recovery:tick"
STATS_KEY = "inkq:recovery:stats"
ENDING_KEY = "inkq:ending"  # job id -> the end the recovery sweep decided, until its drain ends it
METRICS_KEY = "inkq:metrics"  # the job metrics hash (`tasks/core/metrics.py`)
CHANGES_CHANNEL = "inkq:changed"  # the channel of change announcements (`tasks/core/changes.py`)
BLOB_PREFIX = "inkq:blob:"  # blobs of the Redis store, and the names of S3 objects (`tasks/core/blobs.py`)
BLOBS_EXPIRY_KEY = "inkq:blobs:expiry"  # the blob store's objects scored by when they are due
BLOBS_TICK_KEY = "inkq:blobs:tick"  # held while one worker service runs the blob sweep
RQ_QUEUES_KEY = "rq:queues"  # rq's set of queue keys
RQ_WORKERS_KEY = "rq:workers"  # rq's worker registry (set of worker keys)
RETENTION_KEY = "inkq:retention"  # job id -> when its `retentionS` runs out (tasks/erasure.py)
RETENTION_TICK_KEY = "inkq:retention:tick"
RETENTION_GRACE_S = 300  # rq's TTLs of a job kept for `retentionS` run this much longer: a backstop to the sweep
INDEX_CAP = 1000  # a user's job index keeps their newest this many jobs
RQ_REGISTRIES = ("wip", "finished", "failed", "canceled", "scheduled", "deferred")


def alive_key(worker: str) -> str:
    """Key that exists while the worker lives."""
    return f"inkq:alive:{worker}"


def claims_key(worker: str) -> str:
    """List of job ids a worker has taken off its queue and not yet registered as started."""
    return f"inkq:claims:{worker}"


def workers_key(queue: str) -> str:
    """Set of the workers of a queue that keep a liveness key."""
    return f"inkq:workers:{queue}"


def balance_key(user_id: str) -> str:
    """Key of a user's balance (`tasks/core/credits.py`)."""
    return f"inkq:credits:{user_id}"


def charge_key(job_id: str) -> str:
    """Key of a job's pending charge: JSON [userId, cost]."""
    return f"inkq:charge:{job_id}"


def admitting_key(job_id: str) -> str:
    """Key that exists while an admitted job is being written (`tasks/core/credits.py`)."""
    return f"inkq:admitting:{job_id}"


def inflight_key(user_id: str) -> str:
    """Key of the set of a user's waiting and active job ids."""
    return f"inkq:user:{user_id}:inflight"


def user_index_key(user_id: str) -> str:
    """Key of a user's job index (`api/store.py`)."""
    return f"inkq:user:{user_id}:jobs"


def slots_key(worker: str) -> str:
    """Where a worker publishes its slots: the jobs it runs at once (`tasks/core/metrics.py`)."""
    return f"inkq:slots:{worker}"


def job_key(job_id: str) -> str:
    """RQ's hash of a job."""
    return f"rq:job:{job_id}"


def execution_key(member: str) -> str:
    """RQ's hash of an execution, named by its started registry member `<jobId>:<executionId>`."""
    return f"rq:execution:{member}"


def rq_worker_key(worker: str) -> str:
    """RQ's hash of a worker."""
    return f"rq:worker:{worker}"


def worker_executions_key(worker: str) -> str:
    """RQ's set of a worker's executions."""
    return f"rq:worker:{worker}:executions"


def rq_queue_workers_key(queue: str) -> str:
    """RQ's set of the worker keys of a queue."""
    return f"rq:workers:{queue}"


def scheduler_lock_key(queue: str) -> str:
    """RQ's scheduler lock of a queue."""
    return f"rq:scheduler-lock:{queue}"


def scheduled_key(queue: str) -> str:
    """RQ's scheduled registry of a queue (retries waiting for their time)."""
    return f"rq:scheduled:{queue}"


def failed_key(queue: str) -> str:
    """RQ's failed registry of a queue."""
    return f"rq:failed:{queue}"


def canceled_key(queue: str) -> str:
    """RQ's canceled registry of a queue."""
    return f"rq:canceled:{queue}"


def queue_key(queue: str) -> str:
    """RQ's list of waiting job ids."""
    return f"rq:queue:{queue}"


def started_key(queue: str) -> str:
    """RQ's started registry (members `<jobId>:<executionId>`)."""
    return f"rq:wip:{queue}"


def registry_key(kind: str, queue: str) -> str:
    """One of RQ's registries of a queue (`RQ_REGISTRIES`: started, finished, failed, canceled, scheduled,
    deferred)."""
    return f"rq:{kind}:{queue}"


def executions_key(job_id: str) -> str:
    """RQ's registry of a job's executions (zset of execution ids): the fencing token's home
    (`tasks/ending.py`)."""
    return f"rq:executions:{job_id}"


def idempotency_key(user_id: str, key: str) -> str:
    """A user's `Idempotency-Key` record (`api/idempotency.py`), named by a hash so that any key fits."""
    return "inkq:idem:" + hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()


def idempotency_index_key(user_id: str) -> str:
    """The user's `Idempotency-Key` records (sorted set of their key names, scored by expiry), so that erasing
    the user finds them (`tasks/erasure.py`)."""
    return f"inkq:user:{user_id}:idem"


def user_uploads_key(user_id: str) -> str:
    """Every upload of a user still on record, used or not (sorted set of ids, scored by the record's expiry),
    so that erasing the user finds them; `open_uploads_key` holds only the unused ones."""
    return f"inkq:user:{user_id}:uploads"


def stream_leases_key(user_id: str) -> str:
    """The user's set of stream leases (`api/leases.py`)."""
    return f"inkq:streams:{user_id}"


def upload_record_key(upload_id: str) -> str:
    """Key of an upload's record (`api/uploads.py`)."""
    return f"inkq:upload:{upload_id}"


def open_uploads_key(user_id: str) -> str:
    """Key of the set of a user's unused uploads, scored by their expiry (epoch seconds)."""
    return f"inkq:uploads:{user_id}"


def gemini_hold_key(model: str) -> str:
    """Exists (with its expiry at the hold-until time) while every worker holds back calls to `model`."""
    return f"inkq:gemini:hold:{model}"


def gemini_streak_key(model: str) -> str:
    """429s in a row for `model`, for the backoff when the provider sends no delay."""
    return f"inkq:gemini:429s:{model}"


def gemini_learned_key(model: str) -> str:
    """The provider's limit for `model` learned from its 429s (hash: `n` calls per window, `since`)."""
    return f"inkq:gemini:learned:{model}"


def gemini_taken_key(model: str) -> str:
    """Calls to `model` the provider took in the last window, scored by when they were sent."""
    return f"inkq:gemini:taken:{model}"


def gemini_calls_key(model: str) -> str:
    """The budget's moving window for `model`: one member per place taken, scored by when."""
    return f"inkq:gemini:calls:{model}"


def gemini_served_key(model: str) -> str:
    """Each user's last place in the window of `model` (the turns between users)."""
    return f"inkq:gemini:served:{model}"


def gemini_waiting_key(model: str) -> str:
    """The calls to `model` waiting for a place, `<user> <call id>`, scored by when each tries next."""
    return f"inkq:gemini:waiting:{model}"


def deadlines_key() -> str:
    """Jobs with a start deadline (`maxWaitS`), scored by it (epoch seconds): `tasks/core/deadlines.py`."""
    return "inkq:deadlines"


FAIR_PREFIX = "inkq:fair:"


def fair_key(queue: str) -> str:
    """The queue's fair order (`tasks/core/fairness.py`): a zset of its waiting jobs, scored by virtual finish
    tag, members `<seq>:<jobId>:<userId>`. The status read (`lua/fair_place.lua`) builds this name and the
    `:state`, `:slots` names below from `FAIR_PREFIX` and the job's queue, so they are spelled once here."""
    return f"{FAIR_PREFIX}{queue}"


def fair_state_key(queue: str) -> str:
    """The fair order's hash: `v` (virtual time: the tag of the last job taken), `seq` (arrivals), `run_s` (the
    p50 of recent run times)."""
    return f"{FAIR_PREFIX}{queue}:state"


def fair_users_key(queue: str) -> str:
    """Each user's last virtual finish tag in the queue (zset), trimmed to the users ahead of the virtual time."""
    return f"{FAIR_PREFIX}{queue}:users"


def fair_waiting_key(queue: str) -> str:
    """Waiting jobs per user in the queue's fair order (hash user -> n; a user leaves at 0)."""
    return f"{FAIR_PREFIX}{queue}:waiting"


def fair_runs_key(queue: str) -> str:
    """The queue's last run times in seconds (list, newest first, at most `fairness.RUNS_KEPT`)."""
    return f"{FAIR_PREFIX}{queue}:runs"


def fair_slots_key(queue: str) -> str:
    """The slots of the queue's live workers, summed by their liveness beats; lapses with them."""
    return f"{FAIR_PREFIX}{queue}:slots"
