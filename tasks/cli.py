"""`inkq-workers`: run one `rq worker-pool` per queue in the foreground, as one service.

Concurrency per queue comes from CONCURRENCY_*; every pool runs with the scheduler (interval
retries need it) and the JSON serializer. SIGTERM or SIGINT is passed on to every pool for a warm
shutdown (running jobs finish); if a pool dies on its own, the others are stopped and the exit
status is non-zero so the platform restarts the service.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from redis import Redis
from redis.exceptions import RedisError

from .queues import QUEUES, SERIALIZER
from .settings import WorkerSettings

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
         "--logging-level", env.get("LOG_LEVEL", "INFO")]
        for spec in QUEUES.values()
    ]


def main() -> int:
    """Start the pools and supervise them until a signal or a pool's death."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s inkq-workers %(levelname)s %(message)s")
    env = dict(os.environ)
    wait_for_redis(WorkerSettings.from_env(env).redis_url)
    procs = [subprocess.Popen(cmd) for cmd in pool_commands(env)]
    for spec in QUEUES.values():
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
    while any(proc.poll() is None for proc in procs):
        for proc in procs:
            if proc.poll() is not None and not stopping:
                log.error("a worker pool exited with status %s; stopping the others", proc.returncode)
                status = 1
                stop(signal.SIGTERM, None)
        time.sleep(0.2)
    log.info("all worker pools stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
