"""`Idempotency-Key`: the same key from the same user within 24 h returns the original job.

The first request claims the key atomically (SET NX) with its body's fingerprint, as *pending*
for `PENDING_TTL_S`; the transaction that stores its job marks it *done* for 24 h (`confirm`), so
the record says done exactly when the job exists. A claim is released if the submission is refused.
A repeat with another fingerprint is a conflict at once. A repeat with the same fingerprint gets the
original answer only once it is done; while it is pending it waits (up to `WAIT_S`) for the original
to be stored (then 200) or refused (then it is judged as a submission of its own), and answers 409
`conflict` with Retry-After if the original is still under way. Before, a duplicate read the claim
in between and got a 200 naming a job that was then refused, or not yet stored.
"""
from __future__ import annotations

import json
import time

from redis import Redis

from tasks.core import keys

from .errors import ApiError, bad_request

TTL_S = 24 * 3600
PENDING_TTL_S = 120  # a claim whose request died before storing its job frees the key after this
WAIT_S = 10.0
MAX_KEY_LEN = 255


def check_key(value: str | None) -> str | None:
    """The header value if usable; 400 when it is empty or too long."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_KEY_LEN or not value.isprintable():
        raise bad_request(f"Idempotency-Key must be 1-{MAX_KEY_LEN} printable characters.")
    return value


def claim(redis: Redis, user_id: str, key: str, fingerprint: str, answer: dict) -> dict | None:
    """Claim the key for this answer (None), or return the answer of the stored job that used it before."""
    pending = json.dumps({"fingerprint": fingerprint, "answer": answer, "state": "pending"})
    deadline = time.monotonic() + WAIT_S
    while True:
        if redis.set(keys.idempotency_key(user_id, key), pending, nx=True, ex=PENDING_TTL_S):
            return None
        raw = redis.get(keys.idempotency_key(user_id, key))
        if raw is None:
            continue  # released or expired since: claim it again
        earlier = json.loads(raw)
        if earlier["fingerprint"] != fingerprint:
            raise ApiError(409, "conflict", "This Idempotency-Key was already used with a different request.")
        if earlier.get("state", "done") == "done":
            return earlier["answer"]
        if time.monotonic() > deadline:
            raise ApiError(409, "conflict", "A request with this Idempotency-Key is still being processed.",
                           retry_after=1)
        time.sleep(0.05)


def confirm(user_id: str, key: str, fingerprint: str, answer: dict, pipe) -> None:
    """Mark the claim done for 24 h, in the pipeline (transaction) that stores the job, and list it in the
    user's index of records (for an erasure of the user, `tasks/erasure.py`)."""
    record = {"fingerprint": fingerprint, "answer": answer, "state": "done"}
    name, index, expires = keys.idempotency_key(user_id, key), keys.idempotency_index_key(user_id), time.time() + TTL_S
    pipe.set(name, json.dumps(record), ex=TTL_S)
    pipe.zremrangebyscore(index, "-inf", time.time())
    pipe.zadd(index, {name: expires})
    pipe.expire(index, TTL_S)


def release(redis: Redis, user_id: str, key: str) -> None:
    """Forget a claim whose submission did not go through."""
    redis.delete(keys.idempotency_key(user_id, key))
