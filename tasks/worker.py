"""The rq worker class used by the pools: it imports the image stack once, before forking.

Each job runs in a forked work-horse; importing numpy/scipy/Pillow in the parent means every
horse starts with them loaded (shared copy-on-write) instead of paying the import per job.
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


class InkqWorker(Worker):
    """An rq Worker that preloads the job modules."""

    def __init__(self, *args, **kwargs):
        preload()
        super().__init__(*args, **kwargs)
