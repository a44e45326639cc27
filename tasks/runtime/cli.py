"""`inkq-workers`: run the workers of every queue in the foreground, as one service.

The supervisor imports the image stack once (`tasks.runtime.worker`), forks the CPU pool (`tasks/runtime/cpu.py`) and
then one process per queue, each an rq worker running `CONCURRENCY_*` jobs at once in threads
(`tasks/runtime/slots.py`). Forked from the preloaded supervisor (after `gc.freeze`, so the collector does not
touch the shared objects), the processes share its pages copy-on-write.

Every queue's worker runs with the scheduler (interval retries need it) and the JSON serializer.
SIGTERM or SIGINT is passed on to every queue process for a warm shutdown (running jobs finish). A
queue process that dies on its own (OOM killer, SIGKILL) is forked again, as rq's pool starts a new
worker, and the recovery sweep queues its jobs again; one that dies more than `RESTARTS_PER_MINUTE`
times a minute stops the others and the exit status is non-zero so the platform restarts the service.
They die with the supervisor (PR_SET_PDEATHSIG), so a SIGKILLed service leaves nothing running.

The supervisor also runs the recovery sweep (`tasks/runtime/recovery.py`): about once a second across all
worker services on one Redis, the jobs of dead workers are queued again or ended; then it ends the jobs
waiting past their start deadline (`tasks/core/deadlines.py`); beside it, with the S3 store, the blob sweep
deletes a bounded batch of objects that are due (`tasks/core/blobs.py`), and the retention sweep erases the
jobs whose `retentionS` has run out (`tasks/erasure.py`). At start it names
Redis settings that can lose jobs (`tasks/core/durability.py`).
"""
from __future__ import annotations

import signal

_stopped_early = False


def _stop_early(signum, frame) -> None:
    global _stopped_early
    _stopped_early = True


if __name__ == "__main__":  # before the imports below: a stop as the service starts is heard, not fatal
    signal.signal(signal.SIGTERM, _stop_early)
    signal.signal(signal.SIGINT, _stop_early)

import gc  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from redis import Redis  # noqa: E402
from redis.exceptions import RedisError  # noqa: E402

from .. import ending  # noqa: E402
from ..core import blobs as blob_store  # noqa: E402
from .. import erasure  # noqa: E402
from ..core import durability, keys, links, logs  # noqa: E402
from ..core.queues import WORKER_QUEUES, QueueSpec  # noqa: E402
from ..core.settings import WorkerSettings, use  # noqa: E402
from .malloc import tune_malloc  # noqa: E402
from .recovery import SWEEP_EVERY_S, Recovery, drain  # noqa: E402

log = logging.getLogger("inkq.workers")


def wait_for_redis(url: str, timeout_s: float = 60.0) -> None:
    """Block until Redis answers PING, or exit after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            Redis.from_url(url, socket_connect_timeout=2).ping()
            return
        except RedisError as exc:
            if time.monotonic() > deadline:
                log.error("redis at %s did not answer: %s", url.split("@")[-1], exc)
                sys.exit(2)
            time.sleep(1)


_STOPS = {signal.SIGINT, signal.SIGTERM}
RESTARTS_PER_MINUTE = 5  # a queue process dying more often than this (a start-up failure) stops the service


class Restarts:
    """How often each queue's process was forked again in the last minute."""

    def __init__(self):
        self.times: dict[str, list[float]] = {}

    def allow(self, queue: str) -> bool:
        """Whether the process of `queue` may be forked again now (and count it)."""
        now = time.monotonic()
        recent = [t for t in self.times.get(queue, []) if now - t < 60]
        if len(recent) >= RESTARTS_PER_MINUTE:
            return False
        self.times[queue] = [*recent, now]
        return True


class Forked:
    """A forked queue process and its queue."""

    def __init__(self, process, spec: QueueSpec):
        self.process = process
        self.spec = spec

    def poll(self):
        return self.process.exitcode

    @property
    def returncode(self):
        return self.process.exitcode

    def send_signal(self, sig) -> None:
        try:
            os.kill(self.process.pid, sig)
        except ProcessLookupError:
            pass


def run_slot_worker(spec: QueueSpec, settings: WorkerSettings, url: str, pool) -> None:
    """In a forked queue process: one `SlotWorker` for the queue, until it stops."""
    from rq.serializers import JSONSerializer

    from .slots import SlotWorker
    from .worker import InkqQueue, remember_stops

    remember_stops()  # a stop before the worker installs its handlers is remembered, not lost
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    pool.attach(spec.name)
    redis = Redis.from_url(url)
    queue = InkqQueue(spec.name, connection=redis, serializer=JSONSerializer)
    worker = SlotWorker([queue], connection=redis, serializer=JSONSerializer, slots=settings.concurrency[spec.name])
    worker.work(with_scheduler=True, logging_level=settings.log.level)


def start_slot_workers(settings: WorkerSettings, url: str):
    """Preload, fork the CPU pool and one slot worker per queue; (children, pool)."""
    from . import cpu

    tune_malloc()
    gc.collect()
    gc.freeze()
    pool = cpu.Pool(settings.cpu_processes, [spec.name for spec in WORKER_QUEUES])
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)  # the children install their own first
    try:
        pool.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return [fork_slot_worker(spec, settings, url, pool) for spec in WORKER_QUEUES], pool


def fork_slot_worker(spec: QueueSpec, settings: WorkerSettings, url: str, pool) -> Forked:
    """Fork the process of one queue (again, for one that died)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)  # the child installs its own handlers first
    try:
        process = pool.context.Process(target=run_slot_worker, args=(spec, settings, url, pool),
                                       name=f"inkq-{spec.name}", daemon=False)
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return Forked(process, spec)


def sweep(recovery: Recovery, me: str) -> None:
    """One recovery sweep if it is this service's turn, then the ends it (or any service's sweep) left to do
    (`recovery.drain`), then the jobs waiting past their start deadline (`tasks.ending.expire_due`: every
    service, each round, so a deadline is kept within half a second however busy the workers are); Redis
    trouble is logged and tried again."""
    try:
        recovery.maybe_sweep(me)
        drain(recovery.redis)
    except RedisError as exc:
        log.warning("recovery sweep skipped: %s", exc)
    try:
        for job in ending.expire_due(recovery.redis):
            ending.drop_input_now(blob_store.store(recovery.redis), job.id)
    except RedisError as exc:
        log.warning("deadline pass skipped: %s", exc)


def sweep_blobs(blobs, me: str) -> None:
    """Delete a bounded batch of due objects if it is this service's turn; store trouble is logged."""
    try:
        if not blobs.redis.set(blob_store.SWEEP_TICK_KEY, me, nx=True, px=int(SWEEP_EVERY_S * 1000) - 50):
            return
        deleted = blobs.sweep()
        if deleted:
            log.info("blob sweep deleted %d expired objects", deleted)
    except (RedisError, blob_store.StorageUnavailable) as exc:
        log.warning("blob sweep skipped: %s", getattr(exc, "detail", exc))


def _every_half_sweep(sweep, blobs, me: str) -> None:
    """Run `sweep(blobs, me)` for ever, twice per `SWEEP_EVERY_S`: its tick key picks one service per turn."""
    while True:
        sweep(blobs, me)
        time.sleep(SWEEP_EVERY_S / 2)


def sweep_retention(blobs, me: str) -> None:
    """Erase a bounded batch of jobs whose `retentionS` has run out if it is this service's turn
    (`tasks.erasure.sweep_retention`); Redis or store trouble is logged, and the jobs are erased at a later turn."""
    try:
        if not blobs.redis.set(keys.RETENTION_TICK_KEY, me, nx=True, px=int(SWEEP_EVERY_S * 1000) - 50):
            return
        erasure.sweep_retention(blobs.redis, blobs)
    except (RedisError, blob_store.StorageUnavailable) as exc:
        log.warning("retention sweep skipped: %s", getattr(exc, "detail", exc))


def check_store(blobs) -> None:
    """Log, naming the setting, when the image store does not work (wrong credentials, no bucket)."""
    problem = blobs.check()
    if problem:
        log.error("the image store does not work: %s; jobs will fail until it does", problem)


def main() -> int:
    """Start the queue processes and supervise them until a signal or a death."""
    procs: list[Forked] = []
    signaled: set[int] = set()
    stopping = _stopped_early

    def forward() -> None:
        for proc in procs:
            if id(proc) not in signaled and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                signaled.add(id(proc))

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        signaled.clear()  # a second stop is passed on again
        forward()

    signal.signal(signal.SIGTERM, stop)  # first: a stop during start-up (the imports take seconds) is heard
    signal.signal(signal.SIGINT, stop)
    settings = use(WorkerSettings.from_env())  # once, before the forks: every process of the service
    logs.configure(settings.log.format, settings.log.level)
    log.setLevel(logging.INFO)
    try:  # webhooks sign result links with SECRET_KEY under PUBLIC_URL (tasks.core.links)
        links.checked_origin(settings.public_url)
        links.checked_secret(settings.secret_key, settings.dev)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    url = settings.redis_url
    wait_for_redis(url)
    redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    durability.warn_if_unsafe(redis, dev=settings.dev, logger=log)
    recovery = Recovery(redis, [spec.name for spec in WORKER_QUEUES])
    me = f"{socket.gethostname()}:{os.getpid()}"
    try:
        blob_store.parse_store(settings.store.store)
    except blob_store.StoreConfigError as exc:
        log.error("%s", exc)
        return 2
    from . import worker  # noqa: F401 - the image stack, once, before the forks
    if stopping:
        log.info("stopped during start-up")
        return 0
    children, pool = start_slot_workers(settings, url)
    procs.extend(children)
    for spec in WORKER_QUEUES:
        log.info("queue %s: %d jobs at once", spec.name, settings.concurrency[spec.name])
    status = 0
    # After the handlers and the forks: checking the store may take seconds when it is down.
    blobs = blob_store.store(redis, settings.store)
    check_store(blobs)
    if blobs.kind == "s3":  # in a thread of its own: a slow store must not hold up the recovery sweep
        threading.Thread(target=_every_half_sweep, args=(sweep_blobs, blobs, me), daemon=True, name="blob-sweep").start()
    threading.Thread(target=_every_half_sweep, args=(sweep_retention, blobs, me), daemon=True, name="retention-sweep").start()
    next_sweep = 0.0
    restarts = Restarts()
    while any(proc.poll() is None for proc in procs):
        if stopping:
            forward()  # children started after the stop arrived
        for i, proc in enumerate(procs):
            if proc.poll() is None or stopping:
                continue
            if restarts.allow(proc.spec.name):
                log.error("queue %s: its process exited with status %s; starting a new one (the recovery sweep "
                          "queues its jobs again)", proc.spec.name, proc.returncode)
                procs[i] = fork_slot_worker(proc.spec, settings, url, pool)
                continue
            log.error("queue %s: its process exited with status %s, more than %d times in a minute; stopping the "
                      "others", proc.spec.name, proc.returncode, RESTARTS_PER_MINUTE)
            status = 1
            stop(signal.SIGTERM, None)
        if not stopping and pool.dead():
            log.error("%d CPU pool processes died; starting new ones", len(pool.dead()))
            pool.start()
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + SWEEP_EVERY_S / 2
            sweep(recovery, me)
        time.sleep(0.1)
    pool.stop()
    log.info("all queue processes stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
