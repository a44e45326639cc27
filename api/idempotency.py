"""`Idempotency-Key`: the same key from the same user within 24 h returns the original job.

The first request claims the key atomically (SET NX) with its body's fingerprint; a repeat with
the same fingerprint gets the original answer, a different fingerprint is a conflict. A claim is
released if the submission is refused after claiming, so nothing is lost.
"""
from __future__ import annotations

import hashlib
import json

from redis import Redis

from .errors import ApiError, bad_request

TTL_S = 24 * 3600
MAX_KEY_LEN = 255


def _key(user_id: str, key: str) -> str:
    return "inkq:idem:" + hashlib.sha256(f"{user_id}\x00{key}".encode()).hexdigest()


def check_key(value: str | None) -> str | None:
    """The header value if usable; 400 when it is empty or too long."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_KEY_LEN or not value.isprintable():
        raise bad_request(f"Idempotency-Key must be 1-{MAX_KEY_LEN} printable characters.")
    return value


def claim(redis: Redis, user_id: str, key: str, fingerprint: str, answer: dict) -> dict | None:
    """Claim the key for this answer; returns the earlier answer when the key was used before."""
    record = json.dumps({"fingerprint": fingerprint, "answer": answer})
    if redis.set(_key(user_id, key), record, nx=True, ex=TTL_S):
        return None
    raw = redis.get(_key(user_id, key))
    if raw is None:
        return claim(redis, user_id, key, fingerprint, answer)
    earlier = json.loads(raw)
    if earlier["fingerprint"] != fingerprint:
        raise ApiError(409, "conflict", "This Idempotency-Key was already used with a different request.")
    return earlier["answer"]


def release(redis: Redis, user_id: str, key: str) -> None:
    """Forget a claim whose submission did not go through."""
    redis.delete(_key(user_id, key))
