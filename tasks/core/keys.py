"""Redis key names in one module, as rq keeps its own in `rq/keys.py`: a reader greps one file for a key.

`LIVENESS_TTL_MS`, the lifetime of a worker's `alive_key`, stands beside it: every reader of that key
(the recovery sweep, the queue gauges) judges a worker by it.
"""
from __future__ import annotations

LIVENESS_TTL_MS = 5000
TICK_KEY = "inkq:recovery:tick"
STATS_KEY = "inkq:recovery:stats"


def alive_key(worker: str) -> str:
    """Key that exists while the worker lives."""
    return f"inkq:alive:{worker}"


def claims_key(worker: str) -> str:
    """List of job ids a worker has taken off its queue and not yet registered as started."""
    return f"inkq:claims:{worker}"


def workers_key(queue: str) -> str:
    """Set of the workers of a queue that keep a liveness key."""
    return f"inkq:workers:{queue}"


def queue_key(queue: str) -> str:
    """RQ's list of waiting job ids."""
    return f"rq:queue:{queue}"


def started_key(queue: str) -> str:
    """RQ's started registry (members `<jobId>:<executionId>`)."""
    return f"rq:wip:{queue}"
