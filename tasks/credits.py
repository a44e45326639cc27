"""The credits ledger in Redis, shared by the API (charge) and the workers (refund on final failure).

A job is charged once, at admission, and its charge is recorded under `inkq:charge:<jobId>`.
Settling the job consumes that record with GETDEL, so a refund (failed, canceled) or a commit
(completed) happens exactly once however many processes try: retries, crash re-runs, repeated
status reads and the worker's own callbacks all call `settle` safely.
"""
from __future__ import annotations

CHARGE_TTL_S = 30 * 24 * 3600

# The one rule of settling, shared by `settle` and the recovery sweep's script (tasks/recovery.py).
SETTLE_FN = """
local function settle_charge(charge_key, balance_prefix, refund)
  local raw = redis.call('GETDEL', charge_key)
  if not raw then return -1 end
  local user_and_cost = cjson.decode(raw)
  if refund then
    redis.call('INCRBY', balance_prefix .. user_and_cost[1], user_and_cost[2])
  end
  return tonumber(user_and_cost[2])
end
"""

_SETTLE = SETTLE_FN + "return settle_charge(KEYS[1], ARGV[2], ARGV[1] == 'refund')\n"


def balance_key(user_id: str) -> str:
    """Key of a user's balance."""
    return f"inkq:credits:{user_id}"


def charge_key(job_id: str) -> str:
    """Key of a job's pending charge: JSON [userId, cost]."""
    return f"inkq:charge:{job_id}"


def inflight_key(user_id: str) -> str:
    """Key of the set of a user's waiting and active job ids."""
    return f"inkq:user:{user_id}:inflight"


def settle(redis, job_id: str, user_id: str | None, refund: bool) -> int:
    """Refund or commit a job's charge once; returns the amount, or -1 if already settled or never charged."""
    pipe = redis.pipeline()
    pipe.eval(_SETTLE, 1, charge_key(job_id), "refund" if refund else "commit", balance_key(""))
    if user_id:
        pipe.srem(inflight_key(user_id), job_id)
    return int(pipe.execute()[0])
