"""Open event streams per user (MAX_STREAMS_PER_USER, default 20), counted in Redis across API processes.

Each open `GET /status/<id>/events` holds a lease: a member of the user's sorted set
`inkq:streams:<user>` scored with its expiry (Redis `TIME`, so API boxes need not agree on the clock).
Opening one is one Lua script: drop lapsed leases, refuse when the user holds the cap (429
`rate_limited`, with Retry-After), else add the lease. A stream is opened with `open_on`: one script
(one round trip) that reads the job as `status.read` does, checks it belongs to the user, takes the
lease, and answers the read, which is the stream's first event (it used to be three round trips: the
ownership read, the lease, then the stream's first read of the same job). A stream renews its lease as it runs (at
least every EVENTS_POLL_S) and gives it back when its response is closed: when it ends, when the
client goes away (noticed at the next write, within EVENTS_POLL_S), or when the server closes it.
A lease of a process that died lapses after `lease_s` (three re-reads, at least 30 s). The set
itself expires with its last lease.
"""
from __future__ import annotations

import logging
import math
import uuid

from redis import Redis
from redis.exceptions import NoScriptError, RedisError

from tasks.core import keys, scripts

from .errors import ApiError
from .status import View, read_args, read_keys, view_of
from .store import valid_job_id

log = logging.getLogger("inkq.api")

_TAKE = scripts.load("lease_take")
_OPEN = scripts.load("lease_open")


class StreamLeases:
    """The per-user cap on open event streams."""

    def __init__(self, redis: Redis, cap: int, poll_s: float):
        self.redis = redis
        self.cap = cap
        self.lease_s = max(30.0, 3 * poll_s)
        self.retry_after_s = max(1, math.ceil(poll_s))
        self._take = redis.register_script(_TAKE)
        self._open = redis.register_script(_OPEN)

    def open(self, user_id: str) -> "Lease":
        """A lease for one more stream; 429 `rate_limited` when the user holds the cap."""
        lease = Lease(self, user_id, uuid.uuid4().hex)
        if not self._take(keys=[keys.stream_leases_key(user_id)],
                          args=[self.cap, int(self.lease_s * 1000), lease.id, 0]):
            raise self._refused()
        return lease

    def open_on(self, job_id: str, user_id: str, limiter=None) -> tuple[View, "Lease"] | None:
        """In one round trip: the job's view and a lease for a stream on it; None when the job is gone or
        not the user's; 429 `rate_limited` when the user holds the cap (the job is not read then).

        `limiter` (`limits.UserLimiter`): the request is also counted against it, in the same round trip
        (its own script, pipelined before the open); over its limit, its `limits.OverLimit` is raised and
        no lease is kept."""
        if not valid_job_id(job_id):
            return None
        lease = Lease(self, user_id, uuid.uuid4().hex)
        calls = limiter.hits(user_id) if limiter is not None else []
        calls.append((None, self._open, [*read_keys(job_id), keys.stream_leases_key(user_id)],
                      [user_id, self.cap, int(self.lease_s * 1000), lease.id, *read_args()]))
        *counted, reply = self._send(calls)
        failed = next((r for r in (*counted, reply) if isinstance(r, Exception)), None)
        over = next((call[0] for call, r in zip(calls, counted) if not r), None)
        if failed is not None or over is not None:
            if isinstance(reply, list):  # the lease was taken
                lease.release()
            raise failed if failed is not None else limiter.refusal(over, user_id)
        if reply == -1:
            return None
        if reply == 0:
            raise self._refused()
        view = view_of(job_id, reply)
        if view is None or view.user != user_id:  # what the script checked, checked as every read checks it
            lease.release()
            return None
        return view, lease

    def _send(self, calls: list[tuple]) -> list:
        """Run `(_, script, keys, args)` calls in one pipelined round trip (EVALSHA only: a pipeline that
        runs `Script`s asks SCRIPT EXISTS first, a second round trip); a script Redis no longer has
        (restarted, flushed) is loaded and run on its own. The replies in order, errors as exceptions."""
        pipe = self.redis.pipeline(transaction=False)
        for _, script, names, args in calls:
            pipe.evalsha(script.sha, len(names), *names, *args)
        replies = pipe.execute(raise_on_error=False)
        for i, (reply, (_, script, names, args)) in enumerate(zip(replies, calls)):
            if isinstance(reply, NoScriptError):
                try:
                    replies[i] = script(keys=names, args=args)
                except RedisError as exc:
                    replies[i] = exc
        return replies

    def _refused(self) -> ApiError:
        return ApiError(429, "rate_limited",
                        f"Too many open event streams (at most {self.cap} per user); poll GET /status/<jobId> "
                        "or close a stream.", retry_after=self.retry_after_s)


class Lease:
    """One stream's hold on a slot: renew it while the stream runs, release it when it ends."""

    def __init__(self, leases: StreamLeases, user_id: str, lease_id: str):
        self.leases = leases
        self.user_id = user_id
        self.id = lease_id

    def renew(self) -> None:
        """Push the lease's expiry on; a Redis error only leaves it to lapse later."""
        try:
            self.leases._take(keys=[keys.stream_leases_key(self.user_id)],
                              args=[0, int(self.leases.lease_s * 1000), self.id, 1])
        except RedisError as exc:
            log.warning("could not renew a stream lease: %s", exc)

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        try:
            self.leases.redis.zrem(keys.stream_leases_key(self.user_id), self.id)
        except RedisError as exc:
            log.warning("could not release a stream lease (it lapses on its own): %s", exc)
