"""Redis settings that can lose accepted jobs, named at start by the API and by the workers.

An evicted job hash is a lost job: with any `maxmemory-policy` but `noeviction`, Redis may drop
jobs, results or the ledger under memory pressure (BullMQ warns the same way). Without AOF or RDB
persistence, a Redis restart forgets every waiting job. `make run` (INKQ_DEV=1) is exempt from the
persistence warning: it starts a throwaway Redis on purpose. Managed services that refuse `CONFIG
GET` are read through `INFO` instead.
"""
from __future__ import annotations

import logging

from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("inkq.redis")
MIN_VERSION = (6, 2, 0)  # BLMOVE, GETDEL


def _settings(redis) -> dict:
    """maxmemory-policy, appendonly, save and the server version, from CONFIG GET or INFO."""
    info = redis.info()
    found = {"version": info.get("redis_version", ""), "maxmemory-policy": info.get("maxmemory_policy"),
             "appendonly": "yes" if info.get("aof_enabled") else "no", "save": None, "config": True}
    try:
        for name in ("maxmemory-policy", "appendonly", "save"):
            value = redis.config_get(name).get(name)
            if value is not None:
                found[name] = value
    except ResponseError:  # CONFIG is disabled on many managed services: RDB snapshots cannot be seen
        found["config"] = False
    return found


def problems(redis, dev: bool = False) -> list[str]:
    """What in this Redis's configuration can lose or strand jobs, as sentences for the log."""
    found = _settings(redis)
    out = []
    version = tuple(int(p) for p in str(found["version"]).split(".")[:3] if p.isdigit())
    if version and version < MIN_VERSION:
        out.append(f"Redis {found['version']} is older than 6.2: inkq needs BLMOVE and GETDEL.")
    policy = found["maxmemory-policy"]
    if policy and policy != "noeviction":
        out.append(f"Redis maxmemory-policy is {policy}, not noeviction: under memory pressure Redis will "
                   "evict job hashes and lose accepted jobs. Set maxmemory-policy noeviction.")
    if not dev and found["config"] and found["appendonly"] != "yes" and not (found["save"] or "").strip():
        out.append("Redis has neither AOF nor RDB persistence: a Redis restart loses every waiting job. "
                   "Turn on appendonly yes (or RDB snapshots); see docs/deploy.md.")
    return out


def warn_if_unsafe(redis, dev: bool = False, logger: logging.Logger = log) -> list[str]:
    """Log a warning for each problem; a Redis that cannot be asked is logged too, never fatal."""
    try:
        found = problems(redis, dev)
    except RedisError as exc:
        logger.warning("could not read the Redis configuration to check it keeps jobs safe: %s", exc)
        return []
    for sentence in found:
        logger.warning(sentence)
    return found
