"""Job metrics, kept in Redis so that they stay right with any number of worker services and API boxes.

Every end of a job adds its outcome to one hash, `inkq:metrics`, in the end's transaction
(`tasks/ending.py`: completed, failed, retried, canceled, and `late` for a refused end); the workers add
wait times and Gemini calls, the recovery sweep, inside its script, the jobs it queued again (recovered). The API's `/metrics` reads the hash on
each scrape and exposes counters and histograms (`api/metrics.py`); nothing is per process, so a
restart resets nothing and several API boxes report the same totals.

Fields: `c|<queue>|<outcome>` counts; `h|<histogram>|<label>|<i>` counts observations in bucket i (not
cumulative), with `...|sum` and `...|count`. Recording is best effort: a metric never fails a job.
"""
from __future__ import annotations

import logging
from bisect import bisect_left
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from .keys import METRICS_KEY as KEY, claims_key, job_key, queue_key, slots_key, workers_key
from .queues import QUEUE_NAMES

OUTCOMES = ("completed", "failed", "retried", "canceled", "expired", "recovered", "late")  # late: refused ends, expired: not started by the deadline (tasks/ending.py)
GEMINI_OUTCOMES = ("ok", "retryable", "final")
BUCKETS = {
    "run": (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
    "wait": (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
    "gemini": (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
}

log = logging.getLogger("inkq.metrics")


def count(redis, queue: str, outcome: str, n: int = 1, pipeline=None) -> None:
    """Add n to a queue's outcome counter."""
    _write(redis, pipeline, lambda p: p.hincrby(KEY, f"c|{queue}|{outcome}", n))


def observe(redis, histogram: str, label: str, seconds: float, pipeline=None) -> None:
    """Add one observation to a histogram (`run`, `wait` or `gemini`) under a label (a queue, an outcome)."""
    seconds = max(0.0, float(seconds))
    index = bisect_left(BUCKETS[histogram], seconds)
    prefix = f"h|{histogram}|{label}|"

    def write(p):
        p.hincrby(KEY, f"{prefix}{index}", 1)
        p.hincrby(KEY, f"{prefix}count", 1)
        p.hincrbyfloat(KEY, f"{prefix}sum", seconds)
    _write(redis, pipeline, write)


def _write(redis, pipeline, commands) -> None:
    if pipeline is not None:
        commands(pipeline)
    else:
        batch(redis, commands)


def batch(redis, commands) -> None:
    """Run `commands(pipeline)` (counts and observations) in one round trip; a Redis error is logged."""
    try:
        with redis.pipeline(transaction=False) as pipe:
            commands(pipe)
            pipe.execute()
    except RedisError as exc:
        log.warning("could not record metrics: %s", exc)


def gemini_call(outcome: str, seconds: float) -> None:
    """Record one Gemini call from inside a job (the current job's connection); outside a job, nothing."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        return

    def commands(pipe):
        count(job.connection, "gemini", outcome, pipeline=pipe)
        observe(job.connection, "gemini", outcome, seconds, pipeline=pipe)
    batch(job.connection, commands)


def seconds_between(start, end) -> float | None:
    """Seconds from one datetime to another, or None if either is missing."""
    try:
        return (end - start).total_seconds()
    except TypeError:  # missing, or naive beside aware
        return None


@dataclass
class Histogram:
    """One labelled histogram as read back: cumulative bucket counts, sum and count."""

    buckets: list[tuple[float, int]] = field(default_factory=list)  # (upper bound, cumulative count), +Inf last
    sum: float = 0.0
    count: int = 0


@dataclass
class Snapshot:
    """Everything in the hash: counters by (queue, outcome), histograms by (name, label)."""

    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)


def read(redis) -> Snapshot:
    """Read the hash back (one HGETALL)."""
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in redis.hgetall(KEY).items()}
    snap = Snapshot()
    per_bucket: dict[tuple[str, str], dict[str, float]] = {}
    for name, value in raw.items():
        kind, _, rest = name.partition("|")
        if kind == "c":
            queue, _, outcome = rest.rpartition("|")
            snap.counters[(queue, outcome)] = int(value)
        elif kind == "h":
            histogram, _, rest = rest.partition("|")
            label, _, slot = rest.rpartition("|")
            if histogram in BUCKETS:
                per_bucket.setdefault((histogram, label), {})[slot] = float(value)
    for (histogram, label), slots in per_bucket.items():
        bounds = (*BUCKETS[histogram], float("inf"))
        running, buckets = 0, []
        for i, bound in enumerate(bounds):
            running += int(slots.get(str(i), 0))
            buckets.append((bound, running))
        snap.histograms[(histogram, label)] = Histogram(buckets, slots.get("sum", 0.0), int(slots.get("count", 0)))
    return snap


def publish_slots(pipe, worker: str, slots: int) -> None:
    """Add to `pipe` the renewal of a worker's published slots, which lapse with its liveness key
    (`tasks/runtime/recovery.py`): the worker's liveness beat sends both."""
    from .keys import LIVENESS_TTL_MS

    pipe.set(slots_key(worker), int(slots), px=LIVENESS_TTL_MS)


def queue_gauges(redis, queues) -> dict[str, dict]:
    """Per queue, read now: the oldest waiting job's age in seconds (0 when none waits), the live workers
    (those whose liveness key, `tasks/runtime/recovery.py`, has not lapsed) and their concurrency: the sum of the
    slots they publish (`publish_slots`), so the CONCURRENCY_* the running worker services were given,
    whatever the reader's own environment says; 0 when no live worker publishes any. Two round trips."""
    from rq.utils import now as utcnow, str_to_date

    from .keys import alive_key

    pipe = redis.pipeline(transaction=False)
    for name in queues:
        pipe.lindex(queue_key(name), 0)
        pipe.smembers(workers_key(name))
    raw = pipe.execute()
    heads = {name: raw[2 * i] for i, name in enumerate(queues)}
    members = {name: sorted(raw[2 * i + 1]) for i, name in enumerate(queues)}
    pipe = redis.pipeline(transaction=False)
    for name in queues:
        if heads[name] is not None:
            pipe.hget(job_key(heads[name].decode()), "enqueued_at")
        for worker in members[name]:
            pipe.exists(alive_key(worker.decode()))
            pipe.get(slots_key(worker.decode()))
    answers = iter(pipe.execute())
    gauges, at = {}, utcnow()
    for name in queues:
        oldest = 0.0
        if heads[name] is not None:
            enqueued = next(answers)
            if enqueued:
                oldest = max(0.0, (at - str_to_date(enqueued)).total_seconds())
        live = concurrency = 0
        for _ in members[name]:
            alive, slots = next(answers), next(answers)
            if alive:
                live += 1
                concurrency += _count_of(slots)
        gauges[name] = {"oldestWaitingS": round(oldest, 3), "liveWorkers": live, "concurrency": concurrency}
    return gauges


def _count_of(value) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def summary(snapshot: Snapshot, queue: str) -> dict:
    """A queue's totals and timing in JSON (for /admin/queue-stats)."""
    totals = {outcome: snapshot.counters.get((queue, outcome), 0) for outcome in OUTCOMES}
    timing = {}
    for histogram in ("run", "wait"):
        h = snapshot.histograms.get((histogram, queue), Histogram())
        timing[histogram] = {"count": h.count, "meanS": round(h.sum / h.count, 3) if h.count else None,
                             "p50S": quantile(h, 0.5), "p95S": quantile(h, 0.95)}
    return {"totals": totals, "runTime": timing["run"], "queueWait": timing["wait"]}


def quantile(h: Histogram, q: float) -> float | None:
    """The upper bound of the bucket holding quantile q (as Prometheus' histogram_quantile would bound it)."""
    if not h.count:
        return None
    rank = q * h.count
    for bound, cumulative in h.buckets:
        if cumulative >= rank:
            return bound if bound != float("inf") else h.buckets[-2][0]
    return None


def waiting_counts(redis, queues=QUEUE_NAMES) -> dict[str, int]:
    """Ids waiting per queue: in the queue, plus those claimed by a worker and not yet started."""
    pipe = redis.pipeline()
    for name in queues:
        pipe.llen(queue_key(name))
        pipe.smembers(workers_key(name))
    raw = pipe.execute()
    pipe = redis.pipeline()
    workers = {}
    for i, name in enumerate(queues):
        workers[name] = [w.decode() if isinstance(w, bytes) else w for w in raw[2 * i + 1]]
        for worker in workers[name]:
            pipe.llen(claims_key(worker))
    claimed = iter(pipe.execute())
    return {name: int(raw[2 * i]) + sum(next(claimed) for _ in workers[name]) for i, name in enumerate(queues)}
