"""glibc malloc settings of the worker service's processes: the supervisor's, which the queue
processes inherit (`tune_malloc`), and the CPU pool's (`tune_malloc_for_engines`)."""
from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("inkq.malloc")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 256 * 1024
ARENAS = 2
ENGINE_MMAP_THRESHOLD = 32 * 1024 * 1024
ENGINE_TRIM_THRESHOLD = 64 * 1024 * 1024


def tune_malloc() -> None:
    """glibc malloc for many threads handling MB-sized buffers (before the forks, so the children inherit it).

    glibc 2.36 gives threads their own arenas (up to 8 per core), and raises its mmap threshold to the
    size of the largest block freed (up to 32 MB): after the first response, every 1-2 MB provider
    answer came from an arena and its pages stayed with the process when freed. A fixed threshold
    (which also turns the raising off) keeps such buffers in mmap, returned on free; two arenas bound
    the rest.
    """
    _mallopt((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_ARENA_MAX, ARENAS))


def tune_malloc_for_engines() -> None:
    """In a CPU-pool process: give image-sized buffers back to the heap, not to the kernel.

    The pool is forked after `tune_malloc`, whose fixed 256 KB mmap threshold suits the job threads'
    provider answers. The engines allocate and free many arrays of 0.2-30 MB per job: under that
    threshold each one was a fresh mmap, faulted in page by page and unmapped again, and a local
    stencil cost 1.05-1.24 CPU-seconds in the pool against 0.86 with glibc's defaults.
    Here buffers up to 32 MB come from the heap and up to 64 MB of free heap is kept for the next run.
    """
    _mallopt((M_MMAP_THRESHOLD, ENGINE_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, ENGINE_TRIM_THRESHOLD))


def _mallopt(*settings: tuple[int, int]) -> None:
    """glibc's `mallopt` for each (parameter, value); best effort: other C libraries have none."""
    try:
        libc = ctypes.CDLL(None)
        for parameter, value in settings:
            libc.mallopt(parameter, value)
    except (OSError, AttributeError) as exc:
        log.debug("mallopt unavailable: %s", exc)
