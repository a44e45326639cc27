"""Admission of a submission: jobs in flight per user, queue depth and credits, in one atomic step
(`tasks/core/lua/admit.lua`).

Checked in this order, before anything is queued: in-flight jobs (429 `too_many_jobs`; the limit is the
user's plan's `inflight`, `api/plans.py`, which is MAX_INFLIGHT_PER_USER without PLANS), the
queue's waiting depth (503 `queue_full`: ids in the queue plus ids a worker has claimed and not yet
started, see `tasks/runtime/recovery.py`), then credits (403 `insufficient_credits`), which are
reserved in the same Lua script. A refused submission is never charged. An admitted job is marked as
being written until its enqueue transaction lands (`tasks.core.credits.admitting_key`), so `prune` never
takes a job that is still being stored for one that ended. The request rate per
user is limited separately (`limits.py`, with the `limits` library behind Flask-Limiter).
"""
from __future__ import annotations

import logging

from redis import Redis
from tasks import ending
from tasks.core import credits, keys, scripts
from tasks.core.queues import QUEUES

from .errors import ApiError
from .status import TERMINAL, read_many

log = logging.getLogger("inkq.api")


class Admission:
    """Limits and credits for submissions."""

    def __init__(self, redis: Redis, settings):
        self.redis = redis
        self.settings = settings
        self._admit = redis.register_script(scripts.load("admit"))

    def prune(self, user_id: str) -> None:
        """Settle the user's in-flight jobs that have ended (refunding failures and cancellations)."""
        ids = [i.decode() if isinstance(i, bytes) else i for i in self.redis.smembers(credits.inflight_key(user_id))]
        if not ids:
            return
        for job_id, view in zip(ids, read_many(self.redis, ids)):
            if view is None:  # ended long ago and expired, or not yet written: the script tells
                credits.settle_unqueued(self.redis, job_id, user_id, wait_for_admission=True)
            else:
                self.settle(job_id, user_id, view.word)

    def _try(self, user_id: str, spec, operation: str, job_id: str, inflight: int) -> tuple[str, int]:
        s = self.settings
        verdict, value = self._admit(
            keys=[credits.inflight_key(user_id), keys.queue_key(spec.name),
                  credits.balance_key(user_id), credits.charge_key(job_id), keys.workers_key(spec.name),
                  credits.admitting_key(job_id)],
            args=[inflight, s.queue_max_depth, "1" if s.credits_enabled else "0",
                  s.credit_costs[operation], s.credits_initial, job_id, user_id, credits.CHARGE_TTL_S,
                  keys.claims_key(""), credits.ADMIT_GRACE_S])
        return (verdict.decode() if isinstance(verdict, bytes) else verdict), value

    def admit(self, user_id: str, operation: str, job_id: str, plan=None) -> None:
        """Reserve a place (and credits) for a job, or raise the contract's refusal; `plan` (`api.plans.Plan`,
        the default plan's when None) gives the user's limit of jobs in flight."""
        s = self.settings
        spec = QUEUES[operation]
        inflight = (plan or s.plans.of(None)).inflight
        verdict, value = self._try(user_id, spec, operation, job_id, inflight)
        if verdict in ("too_many_jobs", "insufficient_credits"):
            # The in-flight set may still hold jobs that ended, and their refunds may be owed:
            # settle them, then look again once.
            self.prune(user_id)
            verdict, value = self._try(user_id, spec, operation, job_id, inflight)
        if verdict == "too_many_jobs":
            raise ApiError(429, "too_many_jobs",
                           f"You already have {inflight} jobs waiting or running; "
                           "wait for one to finish.", retry_after=5)
        if verdict == "queue_full":
            log.warning("queue full: %s has %d waiting jobs; refusing a submission", spec.name, s.queue_max_depth)
            raise ApiError(503, "queue_full", f"The {spec.name} queue is full; try again shortly.", retry_after=30)
        if verdict == "insufficient_credits":
            raise ApiError(403, "insufficient_credits",
                           f"{operation} costs {s.credit_costs[operation]} credits and your balance is {value}.")

    def release(self, user_id: str, job_id: str) -> None:
        """Undo an admission whose job was not queued (refunds its charge; a job whose record exists is kept)."""
        credits.settle_unqueued(self.redis, job_id, user_id, wait_for_admission=False)

    def settle(self, job_id: str, user_id: str | None, word: str) -> None:
        """A job read as ended whose charge is still pending: repaired by `tasks.ending.repair` (refund failed
        and canceled jobs, commit completed ones). Every read that settles comes here."""
        if word in TERMINAL:
            ending.repair(self.redis, job_id, user_id, word)

    def balance(self, user_id: str) -> int:
        """The user's balance after settling their ended jobs. With credits on, a first read stores the
        starting balance (`CREDITS_INITIAL`); with them off, a read stores nothing, so a user who only
        looked keeps the starting balance in force when credits are turned on."""
        self.prune(user_id)
        key = credits.balance_key(user_id)
        if self.settings.credits_enabled:
            self.redis.set(key, self.settings.credits_initial, nx=True)
        stored = self.redis.get(key)
        return self.settings.credits_initial if stored is None else int(stored)

    def change(self, user_id: str, add: int | None = None, set_to: int | None = None) -> int:
        """Admin: add to or set a user's balance."""
        key = credits.balance_key(user_id)
        if set_to is not None:
            self.redis.set(key, set_to)
            return set_to
        self.redis.set(key, self.settings.credits_initial, nx=True)
        return int(self.redis.incrby(key, add or 0))
