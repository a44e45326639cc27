"""Redis key names in one module, as rq keeps its own in `rq/keys.py`: a reader greps one file for a key.

`LIVENESS_TTL_MS`, the lifetime of a worker's `alive_key`, stands beside it: every reader of that key
(the recovery sweep, the queue gauges) judges a worker by it.
"""
from __future__ import annotations

import hashlib

LIVENESS_TTL_MS = 5000
TICK_KEY = "inkq:recovery:tick"
STATS_KEY = "inkq:recovery:stats"


def alive_key(worker: str) -> str:
    """Key that exists while the worker lives."""
    return f"inkq:alive:{worker}"


def claims_key(worker: str) -> str:
    """List of job ids a worker has taken off its queue and not yet registered as started."""
    return f"inkq:claims:{worker}"


def workers_key(queue: str) -> str:
    """Set of the workers of a queue that keep a liveness key."""
    return f"inkq:workers:{queue}"


def queue_key(queue: str) -> str:
    """RQ's list of waiting job ids."""
    return f"rq:queue:{queue}"


def started_key(queue: str) -> str:
    """RQ's started registry (members `<jobId>:<executionId>`)."""
    return f"rq:wip:{queue}"


def executions_key(job_id: str) -> str:
    """RQ's registry of a job's executions (zset of execution ids): the fencing token's home
    (`tasks/ending.py`)."""
    return f"rq:executions:{job_id}"


def idempotency_key(user_id: str, key: str) -> str:
    """A user's `Idempotency-Key` record (`api/idempotency.py`), named by a hash so that any key fits."""
    return "inkq:idem:" + hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()


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
