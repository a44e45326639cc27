"""Admission of a submission: jobs in flight per user, queue depth and credits, in one atomic step.

Checked in this order, before anything is queued: in-flight jobs (429 `too_many_jobs`), the
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
from tasks.core import credits, keys
from tasks.core.queues import QUEUES

from .errors import ApiError
from .status import TERMINAL, read_many

log = logging.getLogger("inkq.api")

_ADMIT = """
local inflight, qkey, bkey, ckey, wkey, akey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local max_inflight, max_depth = tonumber(ARGV[1]), tonumber(ARGV[2])
local use_credits, cost, initial = ARGV[3] == '1', tonumber(ARGV[4]), tonumber(ARGV[5])
local job_id, user_id, ttl, claims_p = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9]
if redis.call('SCARD', inflight) >= max_inflight then return {'too_many_jobs', 0} end
local depth = redis.call('LLEN', qkey)
for _, worker in ipairs(redis.call('SMEMBERS', wkey)) do
  depth = depth + redis.call('LLEN', claims_p .. worker)  -- taken off the queue, not started yet
end
if depth >= max_depth then return {'queue_full', 0} end
local balance = 0
if use_credits then
  redis.call('SET', bkey, initial, 'NX')
  balance = tonumber(redis.call('GET', bkey))
  if balance < cost then return {'insufficient_credits', balance} end
  balance = redis.call('DECRBY', bkey, cost)
  redis.call('SET', ckey, cjson.encode({user_id, cost}), 'EX', ttl)
end
redis.call('SET', akey, 1, 'EX', ARGV[10])
redis.call('SADD', inflight, job_id)
redis.call('EXPIRE', inflight, ttl)
return {'ok', balance}
"""


class Admission:
    """Limits and credits for submissions."""

    def __init__(self, redis: Redis, settings):
        self.redis = redis
        self.settings = settings
        self._admit = redis.register_script(_ADMIT)

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

    def _try(self, user_id: str, spec, operation: str, job_id: str) -> tuple[str, int]:
        s = self.settings
        verdict, value = self._admit(
            keys=[credits.inflight_key(user_id), keys.queue_key(spec.name),
                  credits.balance_key(user_id), credits.charge_key(job_id), keys.workers_key(spec.name),
                  credits.admitting_key(job_id)],
            args=[s.max_inflight_per_user, s.queue_max_depth, "1" if s.credits_enabled else "0",
                  s.credit_costs[operation], s.credits_initial, job_id, user_id, credits.CHARGE_TTL_S,
                  keys.claims_key(""), credits.ADMIT_GRACE_S])
        return (verdict.decode() if isinstance(verdict, bytes) else verdict), value

    def admit(self, user_id: str, operation: str, job_id: str) -> None:
        """Reserve a place (and credits) for a job, or raise the contract's refusal."""
        s = self.settings
        spec = QUEUES[operation]
        verdict, value = self._try(user_id, spec, operation, job_id)
        if verdict in ("too_many_jobs", "insufficient_credits"):
            # The in-flight set may still hold jobs that ended, and their refunds may be owed:
            # settle them, then look again once.
            self.prune(user_id)
            verdict, value = self._try(user_id, spec, operation, job_id)
        if verdict == "too_many_jobs":
            raise ApiError(429, "too_many_jobs",
                           f"You already have {s.max_inflight_per_user} jobs waiting or running; "
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
