"""The rq worker class used by the pools: it imports the image stack once, before forking.

`rq worker-pool --worker-class tasks.worker.InkqWorker` imports this module in the pool process,
which then forks its workers, which fork a work-horse per job. Importing numpy/scipy/Pillow and the
engines here, at import time, means they are loaded once per pool and shared copy-on-write by
every worker and horse, instead of being imported by each of them.
"""
from __future__ import annotations

import importlib
import logging

from rq.worker import Worker

log = logging.getLogger("inkq.worker")
PRELOAD = ("tasks.jobs", "tasks.images", "tasks.stencil", "tasks.enhance", "tasks.colormatch", "tasks.gemini")


def preload() -> None:
    """Import the job modules; a missing optional one is logged, not fatal."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("could not preload %s: %s", name, exc)


preload()


class InkqWorker(Worker):
    """An rq Worker whose module preloaded the job modules."""
