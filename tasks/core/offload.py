"""Where a job's CPU-bound engine work runs: in the worker service's CPU pool, or inline.

The job functions (`tasks.jobs`) call `run`; the worker runtime installs its pool in each queue
process (`tasks.runtime.cpu.Pool.attach` calls `install`). So the jobs reach the pool without
importing the runtime, and a job function called without it (a test, a benchmark) runs its engine
work inline.
"""
from __future__ import annotations

import importlib

_runner = None


def install(runner) -> None:
    """Send this process's engine work to `runner(path, *args, job_id=..., redis_url=..., report=...)`."""
    global _runner
    _runner = runner


def run(path: str, *args, job_id: str | None = None, redis_url: str = "", report=None):
    """Call the function at dotted `path` with `(*args, report)`: through the installed runner, else here."""
    if _runner is not None:
        return _runner(path, *args, job_id=job_id, redis_url=redis_url, report=report)
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)(*args, report)
