"""`inkq-workers`: run one `rq worker-pool` per queue in the foreground, as one service.

Concurrency per queue comes from CONCURRENCY_*; every pool runs with the scheduler (interval
retries need it) and the JSON serializer. SIGTERM or SIGINT is passed on to every pool for a warm
shutdown (running jobs finish); if a pool dies on its own, the others are stopped and the exit
status is non-zero so the platform restarts the service. Pools die with the supervisor
(PR_SET_PDEATHSIG), so a SIGKILLed service leaves nothing running.

The supervisor also runs the recovery sweep (`tasks/recovery.py`): about once a second across all
worker services on one Redis, the jobs of dead workers are queued again or ended; beside it, with the
S3 store, the blob sweep deletes a bounded batch of objects that are due (`tasks/blobs.py`). At start it names
Redis settings that can lose jobs (`tasks/durability.py`).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from redis import Redis
from redis.exceptions import RedisError

from . import blobs as blob_store
from . import durability, logs
from .orphans import die_with_parent
from .queues import SERIALIZER, WORKER_QUEUES
from .recovery import SWEEP_EVERY_S, Recovery, notify_ended
from .settings import WorkerSettings, env_bool

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


def pool_commands(env) -> list[list[str]]:
    """The `rq worker-pool` command line for each queue."""
    rq = os.path.join(os.path.dirname(sys.executable), "rq")
    settings = WorkerSettings.from_env(env)
    return [
        [rq, "worker-pool", spec.name, "--num-workers", str(spec.concurrency(env)), "--url", settings.redis_url,
         "--serializer", SERIALIZER, "--worker-class", "tasks.worker.InkqWorker",
         "--queue-class", "tasks.worker.InkqQueue",
         "--logging-level", env.get("LOG_LEVEL", "INFO")]
        for spec in WORKER_QUEUES
    ]


def sweep(recovery: Recovery, me: str) -> None:
    """One recovery sweep if it is this service's turn; Redis trouble is logged and tried again."""
    try:
        result = recovery.maybe_sweep(me)
        if result is not None and result.ended:  # webhooks must not hold up the next sweep
            threading.Thread(target=notify_ended, args=(recovery.redis, result.ended), daemon=True).start()
    except RedisError as exc:
        log.warning("recovery sweep skipped: %s", exc)


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


def _blob_sweeps(blobs, me: str) -> None:
    while True:
        sweep_blobs(blobs, me)
        time.sleep(SWEEP_EVERY_S / 2)


def check_store(blobs) -> None:
    """Log, naming the setting, when the image store does not work (wrong credentials, no bucket)."""
    problem = blobs.check()
    if problem:
        log.error("the image store does not work: %s; jobs will fail until it does", problem)


def main() -> int:
    """Start the pools and supervise them until a signal or a pool's death."""
    logs.configure()
    log.setLevel(logging.INFO)
    env = dict(os.environ)
    url = WorkerSettings.from_env(env).redis_url
    wait_for_redis(url)
    redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    durability.warn_if_unsafe(redis, dev=env_bool(env, "INKQ_DEV", False), logger=log)
    recovery = Recovery(redis, [spec.name for spec in WORKER_QUEUES])
    me = f"{socket.gethostname()}:{os.getpid()}"
    try:
        blob_store.parse_store(env.get("BLOB_STORE", ""))
    except blob_store.StoreConfigError as exc:
        log.error("%s", exc)
        return 2
    procs = [subprocess.Popen(cmd, preexec_fn=die_with_parent) for cmd in pool_commands(env)]
    for spec in WORKER_QUEUES:
        log.info("queue %s: %d workers", spec.name, spec.concurrency(env))
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    # After the handlers and the pools' start: checking the store may take seconds when it is down.
    blobs = blob_store.store(redis, env)
    check_store(blobs)
    if blobs.kind == "s3":  # in a thread of its own: a slow store must not hold up the recovery sweep
        threading.Thread(target=_blob_sweeps, args=(blobs, me), daemon=True, name="blob-sweep").start()
    next_sweep = 0.0
    while any(proc.poll() is None for proc in procs):
        for proc in procs:
            if proc.poll() is not None and not stopping:
                log.error("a worker pool exited with status %s; stopping the others", proc.returncode)
                status = 1
                stop(signal.SIGTERM, None)
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + SWEEP_EVERY_S / 2
            sweep(recovery, me)
        time.sleep(0.1)
    log.info("all worker pools stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
