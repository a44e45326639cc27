"""The worker service's CPU pool: local engine work runs in a few processes, never in the job threads.

Provider jobs run as threads (`tasks/runtime/slots.py`), but a local stencil, enhance or colour match is
CPU-bound: in a thread it would hold the GIL against every provider call of its process. So the
supervisor (`tasks/runtime/cli.py`) forks `INKQ_CPU_PROCESSES` processes (default: the box's cores) from its
preloaded image stack, before the queue processes, and every queue process sends its engine work
there: at most that many engine runs at once across the whole service, however many slots wait.

- One task queue, shared by the pool, and one reply pipe per queue, all created before the forks
  (fork context). A reply carries the request id; a reader thread in the queue process hands it to
  the waiting slot. The reply pipe has one reader and no read lock: a `multiprocessing.Queue`
  holds its read lock while it waits, so a queue process killed while waiting (always, for its
  reader thread) left the lock held, and the process forked in its place could never read a reply.
- The engine writes progress into the job's meta itself (`tasks.core.progress.job_reporter` on the job
  fetched by id).
- A pool process ignores SIGINT and SIGTERM: a stop sent to every process of the service
  (systemd's `KillMode=control-group`) lets the running engine work finish. It leaves when the
  supervisor sends it `None` after the queue processes are gone, and is SIGKILLed if the supervisor dies.
- With `WORKER_NICE`, a pool process yields the CPU to the API and Redis on the same box (`lower_priority`):
  engine runs are the only CPU-bound work of the service.
- A job whose slot is ended by the supervisor (timeout, cancel) stops waiting; the engine run goes on
  to its end and its answer is dropped.
- Without a pool (a test calling a job function), `run` calls the function inline.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import uuid
from concurrent.futures import Future, TimeoutError as FutureTimeout

from ..core import offload
from ..core.settings import current
from .orphans import die_with_parent

log = logging.getLogger("inkq.cpu")

WAIT_STEP_S = 0.5  # a waiting slot wakes this often, so an `Abandoned` raised in it is delivered
AUTOGROUP_TRIES = 6
_client: "Client | None" = None


def size() -> int:
    """INKQ_CPU_PROCESSES: engine runs at once per worker service (default: the box's cores)."""
    return current().cpu_processes


class Pool:
    """The queues of the pool; built and started by the supervisor before it forks the queue processes."""

    def __init__(self, processes: int, queue_names):
        self.context = multiprocessing.get_context("fork")
        self.processes = processes
        self.tasks = self.context.Queue()
        self.replies = {name: self.context.Pipe(duplex=False) for name in queue_names}  # (reader, writer)
        self.reply_locks = {name: self.context.Lock() for name in queue_names}
        self.workers: list = []

    def start(self) -> None:
        """Fork the pool processes (again, for any that died)."""
        self.workers = [p for p in self.workers if p.is_alive()]
        while len(self.workers) < self.processes:
            writers = {name: pipe[1] for name, pipe in self.replies.items()}
            proc = self.context.Process(target=_serve, args=(self.tasks, writers, self.reply_locks), name="inkq-cpu",
                                        daemon=False)
            proc.start()
            self.workers.append(proc)

    def dead(self) -> list:
        """Pool processes that have exited."""
        return [p for p in self.workers if not p.is_alive()]

    def stop(self, timeout: float = 10) -> None:
        """Ask every pool process to leave once its current work is done, and wait for them."""
        for _ in self.workers:
            self.tasks.put(None)
        for proc in self.workers:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()

    def attach(self, queue_name: str) -> None:
        """In a queue process: send this process's engine work to the pool."""
        global _client
        _client = Client(self.tasks, self.replies[queue_name][0], queue_name)
        offload.install(run)


class Client:
    """A queue process's side of the pool: submit, and one reader thread for the replies."""

    def __init__(self, tasks, replies, queue_name: str):
        self.tasks, self.replies, self.queue_name = tasks, replies, queue_name
        self.waiting: dict[str, Future] = {}
        self.lock = threading.Lock()
        self.reader: threading.Thread | None = None

    def submit(self, path: str, args: tuple, job_id: str | None, redis_url: str) -> Future:
        """Send one call to the pool; its future."""
        future: Future = Future()
        request = uuid.uuid4().hex
        with self.lock:
            self.waiting[request] = future
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, name="inkq-cpu-replies", daemon=True)
                self.reader.start()
        self.tasks.put((self.queue_name, request, path, args, job_id, redis_url))
        return future

    def _read(self) -> None:
        while True:
            request, ok, value = self.replies.recv()
            with self.lock:
                future = self.waiting.pop(request, None)
            if future is None:
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def run(path: str, *args, job_id: str | None = None, redis_url: str = "", report=None):
    """Call `path(*args, report)` in the pool (progress written to job `job_id`), or inline without one."""
    if _client is None:
        return _resolve(path)(*args, report)
    future = _client.submit(path, args, job_id, redis_url)
    while True:
        try:
            return future.result(timeout=WAIT_STEP_S)
        except FutureTimeout:
            continue


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _serve(tasks, replies, locks) -> None:
    """A pool process: run calls until a `None` arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    die_with_parent(signal.SIGKILL)
    from .malloc import tune_malloc_for_engines

    tune_malloc_for_engines()
    lower_priority(worker_nice())
    connections: dict = {}
    while True:
        item = tasks.get()
        if item is None:
            return
        queue_name, request, path, args, job_id, redis_url = item
        try:
            reply = (request, True, _resolve(path)(*args, _reporter(job_id, redis_url, connections)))
        except Exception as exc:
            reply = (request, False, _picklable(exc))
        with locks[queue_name]:
            replies[queue_name].send(reply)


def worker_nice() -> int:
    """WORKER_NICE: how far below the API the pool's engine runs go (0 turns it off; at most 19)."""
    return current().worker_nice


def lower_priority(nice: int) -> None:
    """In a new pool process: let the API and Redis on the same box take a core first.

    Linux shares CPU between sessions (autogroups) before nice values count, so a niced process still
    got its whole service's share beside the API. Here the process starts a session of its own
    (`setsid`), whose autogroup is lowered to `nice`, is niced, and runs under SCHED_IDLE so an
    ordinary task that wakes (a status read) preempts it at once. Only the pool: the supervisor, the
    queue processes and their threads keep their ordinary priority. Each step after `setsid` is best
    effort (no autogroups, no SCHED_IDLE).
    """
    if nice <= 0:
        return
    os.setsid()
    for _ in range(AUTOGROUP_TRIES):
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
            break
        except BlockingIOError:  # unprivileged writers get one write per 100 ms across the machine
            time.sleep(0.03)
        except OSError as exc:
            log.debug("could not lower the pool process's autogroup: %s", exc)
            break
    try:
        os.nice(nice)
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError) as exc:
        log.debug("could not lower the pool process's priority: %s", exc)


def _reporter(job_id: str | None, redis_url: str, connections: dict):
    from ..core.progress import job_reporter, silent

    if not job_id or not redis_url:
        return silent
    from redis import Redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    if redis_url not in connections:
        connections[redis_url] = Redis.from_url(redis_url)
    from ..core.changes import EXECUTION_ATTR

    job_id, _, execution_id = job_id.partition(":")  # `<jobId>:<executionId>`: progress fenced by it
    job = Job.fetch(job_id, connection=connections[redis_url], serializer=JSONSerializer)
    setattr(job, EXECUTION_ATTR, execution_id or None)
    return job_reporter(job)


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
