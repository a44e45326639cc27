"""Image bytes live in Redis under their own keys with a TTL, never inside a job payload."""
from __future__ import annotations

PREFIX = "inkq:blob:"


def input_key(job_id: str) -> str:
    """Key of a job's input image."""
    return f"{PREFIX}in:{job_id}"


def output_key(job_id: str) -> str:
    """Key of a job's output image."""
    return f"{PREFIX}out:{job_id}"


def svg_key(job_id: str) -> str:
    """Key of a stencil's SVG, when one was asked for."""
    return f"{PREFIX}svg:{job_id}"


def put(redis, key: str, data: bytes, ttl_s: int, pipeline=None) -> str:
    """Store bytes under key for ttl_s seconds; returns the key."""
    (pipeline or redis).set(key, data, ex=max(1, int(ttl_s)))
    return key


def get(redis, key: str) -> bytes | None:
    """The bytes under key, or None when missing or expired."""
    return redis.get(key)


def discard_input(redis, job_id: str) -> None:
    """Delete a job's input once the job has ended: it is only needed for retries."""
    redis.delete(input_key(job_id))
