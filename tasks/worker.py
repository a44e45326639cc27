"""The rq worker class used by the pools: it imports the image stack once, before forking.

`rq worker-pool --worker-class tasks.worker.InkqWorker` imports this module in the pool process,
which then forks its workers, which fork a work-horse per job. Importing numpy/scipy/Pillow and the
engines here, at import time, means they are loaded once per pool and shared copy-on-write by
every worker and horse, instead of being imported by each of them.
"""
from __future__ import annotations

import importlib
import logging
import os
import signal

from rq.exceptions import StopRequested
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

# rq's pool forks its workers before it installs its own signal handlers, so a worker forked while
# the service is being stopped inherits Python's default SIGINT (KeyboardInterrupt), and the pool's
# stop can be swallowed inside logging's fork hooks: that worker never stops and the pool waits for
# ever. This handler, installed when the pool imports this module, is what such a worker inherits;
# it only remembers the stop, and `InkqWorker.bootstrap` acts on it.
_stop_before_start = False


def _remember_stop(signum, frame) -> None:
    global _stop_before_start
    _stop_before_start = True


signal.signal(signal.SIGINT, _remember_stop)


class InkqWorker(Worker):
    """An rq Worker whose module preloaded the job modules, which hears a stop during start-up,
    and whose stop never hits itself."""

    def bootstrap(self, *args, **kwargs):
        """Install the shutdown handlers before start-up, not after it.

        rq installs them only once registration and the scheduler are done; a SIGINT from the pool
        in between (a deploy that stops the service as it starts) is then lost in a
        KeyboardInterrupt, and the pool waits for that worker for ever.
        """
        self._install_signal_handlers()
        if _stop_before_start:
            self.request_stop(signal.SIGINT, None)
        super().bootstrap(*args, **kwargs)

    def work(self, *args, **kwargs):
        """Run the work loop; a stop requested during start-up ends it quietly."""
        try:
            return super().work(*args, **kwargs)
        except StopRequested:
            self.register_death()
            return False

    def kill_horse(self, sig=signal.SIGKILL):
        """Kill the work-horse's process group, but never the worker's own.

        rq 3.0 calls `os.killpg(os.getpgid(self.horse_pid), sig)`. When a stop command arrives just
        as a job ends, `horse_pid` is already 0, `getpgid(0)` is the worker's own group, and the
        whole worker service is SIGKILLed. Without a live horse of its own group there is nothing
        to stop.
        """
        pid = self.horse_pid
        if pid <= 0:
            return
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return
        if group == os.getpgrp():
            os.kill(pid, sig)
            return
        super().kill_horse(sig)
