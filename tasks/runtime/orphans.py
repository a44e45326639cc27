"""Processes that must not outlive their parent (Linux `PR_SET_PDEATHSIG`).

A work-horse whose worker is gone would finish its job with nobody watching it while the recovery
sweep (`tasks/runtime/recovery.py`) runs the same job again elsewhere: the horse is SIGKILLed with its worker.
A worker pool or a worker whose parent is gone gets SIGTERM and shuts down warmly.

`prctl` is looked up once, when this module is imported, never in a freshly forked child: a lookup
there (`dlopen`/`dlsym`) needs the dynamic loader's lock, which another thread of the parent may
have held at the moment of the fork.
"""
from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: nothing to ask for
    _prctl = None


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits; if it already has, send it now."""
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, int(sig))
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
