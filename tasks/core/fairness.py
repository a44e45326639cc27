"""The fair order of each queue: start-time fair queueing across users, kept in Redis beside rq's list.

rq serves a queue's list first come, first served: one user's 50 queued jobs made everyone arriving after
them wait for all 50. Here users take turns, a user of weight w getting w turns per round (`PLANS`), and
a user's own jobs keep their order. rq's list stays what it was: every waiting id is still in it, so
rq-dashboard, `/admin/queue-stats`, the depth limit and the recovery sweep see every waiting job.
What changes is which id a worker takes from it.

Start-time fair queueing (Goyal, Vin and Cheng, 1996), per queue, all in Lua (`lua/fair_*.lua`):
- **Enqueue** (`enqueue_in`, in the transaction that queues the job, `api/store.py`): the job's tag is
  `max(V, the user's last tag) + 1/weight`, where V, the queue's virtual time, is the tag of the last job
  taken. The job enters a sorted set scored by tag (`keys.fair_key`), ties broken by arrival (the member
  starts with a zero-padded sequence number); the job hash keeps its member (field `fair`). A user
  arriving with nothing waiting starts at V, so a user idle for an hour has saved up no turns, and a user
  with 50 waiting jobs has tags V+1 ... V+50: every newcomer is placed after at most one of them.
- **Take** (`take`, the worker's dequeue, `tasks/runtime/worker.py`): one script moves the id of the lowest
  tag from rq's list into the worker's claims list (LREM, RPUSH), as atomic as the BLMOVE it stands in
  for. Ids that rq or inkq push at the list's head outside the order are looked at first: one that never
  started (a worker lost between taking and starting it: its turn was already given) is taken at once,
  as rq would; one that ran before (a retry, which goes back at the head, or a re-run after a dead
  worker) enters the order as its user's next turn, so a user whose jobs fail and retry does not jump
  the others. An id deeper in the list outside the order is looked at once it reaches the head, so
  no id is ever starved. With nothing queued, the worker blocks in BLMOVE as before and then tells the
  order what it took (`taken`).
- **Leave** (`leave_in`, the `Fairness` hook of every end, `tasks/ending.py`): a job canceled, expired or
  erased while waiting leaves the order and its user's waiting count; a no-op for any other end.
- **Place** (`Place`, read inside the status read, `lua/fair_place.lua`): queuePosition is the member's rank
  + 1 (ZRANK, O(log n)); with the queue's p50 run time, its live slots and its running jobs (each O(1)),
  `eta_s` estimates the time to the result.

Bounded memory: the order and the waiting counts hold waiting jobs only (a job leaves at its take or
end); a user's last tag is kept only while the user has jobs waiting; run times are the last `RUNS_KEPT`.
What a user learns: the rank of their own job and an estimate, never whose jobs are ahead.
A waiting job's position never rises while workers take, nor when its own user or a user with more
turns queued adds jobs; it rises by one only when a job arrives whose user's turn comes first (a user
with fewer jobs waiting, or a greater weight).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from . import keys, scripts
from .queues import QUEUES

RUNS_KEPT = 100
# Run time assumed until a queue's first job completes: a job with a Gemini call (5-8 s) and its image's
# download and checks, many at once; a local stencil takes 1-3 s, a color-match about 1 s.
PRIOR_RUN_S = {QUEUES["stencil"].name: 8.0, QUEUES["enhance"].name: 10.0, QUEUES["ia-gen"].name: 10.0,
               QUEUES["color-match"].name: 2.0}

_ENQUEUE = scripts.load("fair_enqueue")
_TAKE = scripts.load("fair_take")
_LEAVE = scripts.load("fair_leave")
_RUN = scripts.load("fair_run")
_SLOTS = scripts.load("fair_slots")
_registered: dict[int, object] = {}


def read_args() -> list[str]:
    """The ARGV the status read's scripts pass to `fair_place` (status_read.lua, lease_open.lua)."""
    return [keys.FAIR_PREFIX, keys.started_key("")]


def _order_keys(queue: str) -> list[str]:
    return [keys.fair_key(queue), keys.fair_users_key(queue), keys.fair_waiting_key(queue), keys.fair_state_key(queue)]


def enqueue_in(pipe, queue: str, job_id: str, user_id: str, weight: int = 1) -> int:
    """Add the job's entry in its queue's order to `pipe` (the transaction that queues it); the index of its
    reply, which `Place.of` reads."""
    index = len(pipe)
    pipe.eval(_ENQUEUE, 5, *_order_keys(queue), keys.job_key(job_id),
              user_id, max(1, int(weight)), job_id, queue, *read_args())
    return index


def take(connection, queue: str, claims_key: str):
    """Move the next job id of `queue`, in the fair order, into `claims_key`; None when nothing waits."""
    script = _script(connection, _TAKE)
    return script(keys=[keys.queue_key(queue), claims_key, *_order_keys(queue)], args=[keys.job_key("")], client=connection) or None


def taken(connection, queue: str, job_id: str) -> None:
    """After a BLMOVE took `job_id` off the list: it leaves the order, and V moves to its tag."""
    script = _script(connection, _LEAVE)
    script(keys=[*_order_keys(queue), keys.job_key(job_id)], args=["take"], client=connection)


def leave_in(pipe, queue: str, job_id: str) -> None:
    """Add to `pipe` (a job's end) its removal from the order, if it is still there."""
    pipe.eval(_LEAVE, 5, *_order_keys(queue), keys.job_key(job_id), "end")


def record_run_in(pipe, queue: str, seconds: float) -> None:
    """Add to `pipe` one run time of `queue`, and the new p50 of its last `RUNS_KEPT`."""
    pipe.eval(_RUN, 2, keys.fair_runs_key(queue), keys.fair_state_key(queue), f"{max(0.0, seconds):.3f}", RUNS_KEPT)


def publish_slots_in(pipe, queue: str, slots_prefix: str) -> None:
    """Add to `pipe` (a worker's liveness beat) the sum of the slots of `queue`'s live workers, kept for a
    liveness TTL (`slots_prefix`: where workers publish theirs, `tasks.core.metrics.slots_key('')`)."""
    pipe.eval(_SLOTS, 2, keys.workers_key(queue), keys.fair_slots_key(queue), keys.alive_key(""), slots_prefix,
              keys.LIVENESS_TTL_MS)


def _script(connection, source: str):
    found = _registered.get(id(connection), {}).get(source)
    if found is None:
        found = connection.register_script(source)
        _registered.setdefault(id(connection), {})[source] = found
    return found


def stats(redis, queues) -> dict[str, dict]:
    """Per queue: `runS`, the p50 of its recent run times (None before any), and `users`, the users with
    jobs waiting in its order. One round trip."""
    with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.hget(keys.fair_state_key(queue), "run_s")
            pipe.hlen(keys.fair_waiting_key(queue))
        raw = pipe.execute()
    return {queue: {"runS": _number(raw[2 * i]), "users": int(raw[2 * i + 1])} for i, queue in enumerate(queues)}


def _number(raw) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Place:
    """Where a waiting or active job stands, as `lua/fair_place.lua` reads it."""

    position: int | None  # 1 = the next to start; None when the job is not in the order
    run_s: float | None  # the queue's p50 run time, None before any run
    slots: int  # jobs the queue's live workers run at once
    active: int  # jobs running in the queue

    @classmethod
    def of(cls, reply) -> "Place | None":
        """From the script's answer (None for a job neither waiting nor active)."""
        if not reply:
            return None
        position, run_s, slots, active = reply
        return cls(int(position) if position else None, _number(run_s), int(_number(slots) or 0), int(active or 0))

    def eta_s(self, queue: str | None, active: bool, started_at: str | None = None, now: float | None = None) -> int | None:
        """Estimated seconds until the result. Waiting at position p, with s slots of which f are free: p <= f
        starts at once, else once the p - f jobs ahead of it beyond the free slots have started, s of them
        per p50 run time (the slots end their jobs at staggered times, not in rounds), then runs one;
        active: the p50 run time less the time run so far. None when unknown (no run time and no prior, no live slot,
        not in the order)."""
        run = self.run_s or PRIOR_RUN_S.get(queue or "")
        if not run:
            return None
        if active:
            elapsed = _elapsed(started_at, now)
            return round(max(run - elapsed, 0.0)) if elapsed is not None else round(run)
        if self.position is None or self.slots <= 0:
            return None
        free = max(self.slots - self.active, 0)
        ahead = max(self.position - free, 0) / self.slots
        return round(run * (ahead + 1))


def _elapsed(started_at: str | None, now: float | None) -> float | None:
    if not started_at:
        return None
    try:
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return max(0.0, (time.time() if now is None else now) - started)
