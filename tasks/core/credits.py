"""The credits ledger in Redis, shared by the API (charge) and the workers (refund on final failure).

A job is charged once, at admission, and its charge is recorded under `inkq:charge:<jobId>`.
Settling the job consumes that record with GETDEL, so a refund (failed, canceled) or a commit
(completed) happens exactly once however many processes try: retries, crash re-runs, repeated
status reads and every end of the job (`tasks/ending.py`) all settle safely.

Between admission (the charge and the in-flight entry) and the transaction that writes the job,
the job has no record. Admission marks that gap with `inkq:admitting:<jobId>` (expiring after
`ADMIT_GRACE_S`; the enqueue transaction deletes it), and `settle_unqueued` refunds a job without
a record only once it is neither being written nor written: one script, so a concurrent enqueue
is seen either before or after, never half-way. Without it, `GET /credits` during an 8 MB
upload's enqueue took the job as ended and refunded it, and the job then ran uncharged.
"""
from __future__ import annotations

from rq.job import Job

from . import scripts
from .keys import admitting_key, balance_key, charge_key, inflight_key  # noqa: F401 (callers name them here)

CHARGE_TTL_S = 30 * 24 * 3600
ADMIT_GRACE_S = 120  # far above an enqueue's worst case (10 s socket timeout on a 10 MB write)

SETTLE_FN = scripts.load("settle_charge")  # a function, joined into the recovery sweep's script
_SETTLE = scripts.load("settle")
_SETTLE_UNQUEUED = scripts.load("settle_unqueued")


def settle(redis, job_id: str, user_id: str | None, refund: bool) -> int:
    """Refund or commit a job's charge once; returns the amount, or -1 if already settled or never charged."""
    pipe = redis.pipeline()
    settle_in(pipe, job_id, user_id, refund)
    return int(pipe.execute()[0])


def settle_in(pipe, job_id: str, user_id: str | None, refund: bool) -> None:
    """Add `settle`'s commands to `pipe` (a job's end transaction, `tasks/ending.py`): the settlement, then
    the job's removal from its owner's in-flight set."""
    pipe.eval(_SETTLE, 1, charge_key(job_id), "refund" if refund else "commit", balance_key(""))
    if user_id:
        pipe.srem(inflight_key(user_id), job_id)


def settle_unqueued(redis, job_id: str, user_id: str, wait_for_admission: bool) -> int:
    """Refund an admitted job that has no record and forget it; -2 (nothing done) if its record exists, or
    is still being written and `wait_for_admission`; else as `settle`."""
    return int(redis.eval(_SETTLE_UNQUEUED, 4, Job.key_for(job_id), admitting_key(job_id), charge_key(job_id),
                          inflight_key(user_id), balance_key(""), job_id, "1" if wait_for_admission else "0"))
