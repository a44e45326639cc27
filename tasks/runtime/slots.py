"""Many jobs in flight in one process: the service's rq worker, whose jobs run in threads ("slots").

A provider job is one 5-8 s HTTPS call; rq's forked work-horse per call cost 41-55 MB and 100 of them
could not be scheduled on 2 cores. `SlotWorker` keeps rq's queues, registries, retries,
scheduler and dashboard, and the recovery design of `tasks/runtime/recovery.py` (claims, liveness, the sweep),
and changes only where a job runs:

- **The main thread dequeues and supervises.** It takes a job only while a slot is free
  (`CONCURRENCY_*` slots per queue: jobs in flight per queue per worker service), hands it to a slot
  thread, and wakes at least every `SUPERVISE_EVERY_S` to supervise: heartbeats, timeouts, stops.
- **One place heartbeats every running execution.** rq 3.0 heartbeats an execution only from
  `Worker.monitor_work_horse`, which a thread never reaches: without `beat`, the started registry
  would drop a job running longer than its heartbeat TTL (about 90 s) as abandoned. `beat` renews the
  worker, each execution and each job in one pipeline every `HEARTBEAT_EVERY_S`. A job's start and its
  heartbeats are fenced by the execution (`job_start.lua`, `heartbeat.lua`): rq's wrote the job's hash
  whatever became of it, and so made a job erased meanwhile (`tasks/erasure.py`) exist again. The
  outputs of a job ended here (stopped, timed out) are deleted once its detached thread is done.
- **A per-job timeout without signals.** rq's `UnixSignalDeathPenalty` works only on the main thread,
  and `TimerDeathPenalty`'s asynchronous exception cannot interrupt a blocked socket read. A provider
  call is bounded by its HTTP timeout (`GEMINI_TIMEOUT_S`, below every job timeout); as the last resort,
  the supervisor ends a job past its rq timeout itself: it is failed or retried as a
  `JobTimeoutException` (the rule of `tasks.core.errors.decide`), its slot is freed at once, and the thread,
  now detached, gets an asynchronous `Abandoned` so it does nothing more once its blocking call returns.
- **Cancel.** rq's `stop-job` command kills a horse and handles only the worker's first execution
  (`handle_stop_job_command` compares with `get_current_job_id()`); here it marks the slot running that
  job, and the supervisor ends the job as stopped (as rq's `_handle_stopped_job`: canceled,
  `STOPPED` status) and detaches the thread the same way. No process is ever signalled for a job: the
  worker is rq's `BaseWorker`, whose `kill_horse` does nothing.
- **Per-job context.** `get_current_job()` is a ContextVar that `Job.perform` sets in the slot's
  thread; each slot binds the job's log fields (`tasks.core.logs`, also a ContextVar) in its own thread.
- **Stops.** SIGTERM (to the main process, or to every process of the service) is a warm stop: no new
  job is taken, the running ones finish (still under their timeouts), then the worker leaves. A second
  signal more than a second later is a cold stop: the process exits and the recovery sweep queues its
  jobs again.
- Every end (the thread's, the supervisor's) goes through `InkqWorker.end`, the one end path of
  `tasks/ending.py`, fenced by the slot's execution id; the ends are serialised by one lock (each is one
  short Redis transaction).
- CPU-bound engine work does not run in the slots: `tasks/runtime/cpu.py` sends it to the service's process pool.
"""
from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

from redis.exceptions import NoScriptError
from rq.command import parse_payload
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.timeouts import BaseDeathPenalty, JobTimeoutException
from rq.utils import now, utcformat
from rq.worker.base import format_exc_info

from .. import ending
from ..core import blobs, deadlines, keys, logs, scripts
from ..core.changes import EXECUTION_ATTR
from ..core.queues import WORKER_QUEUES
from ..core.settings import current
from .worker import InkqQueue, InkqWorker, bind_job, signals_for_main_thread_only

log = logging.getLogger("inkq.slots")

SUPERVISE_EVERY_S = 1
HEARTBEAT_EVERY_S = 5.0
DEFAULT_TIMEOUT_S = 180


class Abandoned(BaseException):
    """Raised in a slot thread whose job the supervisor has already ended (timeout, cancel)."""


class NoDeathPenalty(BaseDeathPenalty):
    """rq arms a death penalty around job callbacks (its registry cleanup may run them); a signal one
    cannot be armed off the main thread, and inkq's jobs carry no callback, so none is armed."""

    def setup_death_penalty(self):
        pass

    def cancel_death_penalty(self):
        pass


@dataclass(eq=False)
class Slot:
    """One job in flight: its thread, and who ends it (the thread, or the supervisor)."""

    job: Job
    queue: object
    execution: object
    started: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None
    stop_requested: bool = False
    ended_by: str | None = None  # "thread" or "supervisor", set once under `lock`
    lock: threading.Lock = field(default_factory=threading.Lock)

    def claim(self, who: str) -> bool:
        """Whether `who` is the one that ends this job (the first to ask)."""
        with self.lock:
            if self.ended_by is None:
                self.ended_by = who
                return True
            return False


def slots_for(queue_names, concurrency=None) -> int:
    """Jobs in flight for this worker: the CONCURRENCY_* of its queue (`settings.concurrency`)."""
    concurrency = current().concurrency if concurrency is None else concurrency
    specs = {spec.name: spec for spec in WORKER_QUEUES}
    return max((concurrency[specs[name].name] for name in queue_names if name in specs), default=1)


class SlotWorker(InkqWorker):
    """An InkqWorker that runs up to `slots` jobs at once, each in a thread of its own."""

    death_penalty_class = NoDeathPenalty

    def __init__(self, *args, slots: int | None = None, **kwargs):
        self.running: dict[str, Slot] = {}  # execution id -> slot
        self.detached: list[Slot] = []  # slots the supervisor ended whose thread may still run
        self._changed = threading.Condition()
        self._finish_lock = threading.Lock()
        self._next_beat = 0.0
        self._cold = False
        super().__init__(*args, **kwargs)
        self.slots = slots or slots_for(self.queue_names())
        self._start = self.connection.register_script(scripts.load("job_start"))
        self._heartbeat = self.connection.register_script(scripts.load("heartbeat"))

    # --- the main thread: dequeue, hand off, supervise ------------------------------------------

    @property
    def dequeue_timeout(self) -> int:
        """Wake every second while jobs run (supervision), else as InkqWorker."""
        return SUPERVISE_EVERY_S if self.running else super().dequeue_timeout

    def execute_job(self, job, queue):
        """Start the job in a slot thread; return once a slot is free for the next one. A job taken past its
        start deadline is ended instead (`past_deadline`)."""
        try:
            if self.past_deadline(job):
                return
            execution = self.prepare_execution(job)
            if execution is None:  # erased or ended since it was dequeued: nothing to run
                log.info("job %s is gone or has ended; not started", job.id)
                return
            setattr(job, EXECUTION_ATTR, execution.id)  # the job's own writes are fenced by it
            slot = Slot(job, queue, execution)
            slot.thread = threading.Thread(target=self._run, args=(slot,), name=f"slot-{job.id[:8]}", daemon=True)
            with self._changed:
                self.running[execution.id] = slot
            with signals_for_main_thread_only():
                slot.thread.start()
        finally:
            InkqQueue.holding = False
            logs.clear()
        self.wait_for_slots(self.slots - 1)

    def past_deadline(self, job) -> bool:
        """Whether a job just taken is past its start deadline (`tasks/core/deadlines.py`) and this worker,
        which holds it in its claims, has ended it instead of running it (canceled, refunded, out of its
        claims). Its meta was read just now, as it was taken."""
        if not InkqQueue.claims_key or not deadlines.is_due(job.meta or {}):
            return False
        with self._finish_lock:
            done = ending.expire(self.connection, job, claims_key=InkqQueue.claims_key)
        if done:
            ending.drop_input_now(blobs.store(self.connection), job.id)
        return done

    def wait_for_slots(self, at_most: int) -> None:
        """Supervise until at most `at_most` jobs run."""
        while True:
            self.supervise()
            with self._changed:
                if len(self.running) <= at_most:
                    return
                self._changed.wait(SUPERVISE_EVERY_S)

    def heartbeat(self, timeout=None, pipeline=None):
        """On the main thread, InkqWorker's heartbeat (where an idle stop is heard) and a supervision
        round; from a slot thread (rq's `prepare_job_execution`), only rq's."""
        if threading.current_thread() is not threading.main_thread():
            return self.rq_heartbeat(timeout, pipeline)
        if pipeline is None and self.running:
            self.supervise()
        return super().heartbeat(timeout, pipeline)

    def supervise(self) -> None:
        """End the jobs past their timeout or asked to stop; heartbeat the others when due; delete what the
        threads of jobs ended so stored once they are done."""
        for slot in list(self.running.values()):
            if slot.stop_requested:
                self._end_by_supervisor(slot, stopped=True)
            elif time.monotonic() - slot.started > self._timeout_of(slot.job):
                self._end_by_supervisor(slot, stopped=False)
        if self.running and time.monotonic() >= self._next_beat:
            self.beat()
        if self.detached:
            self.drop_detached_outputs()

    def drop_detached_outputs(self) -> None:
        """The thread of a job the supervisor ended (stopped, timed out) runs on until its blocking call returns,
        and may store its output before its `Abandoned` arrives: never a result (a retry writes its own), and
        after an erasure, an image of an erased job. Once such a thread is done, its execution's outputs go."""
        for slot in [slot for slot in self.detached if slot.thread is None or not slot.thread.is_alive()]:
            self.detached.remove(slot)
            try:
                blobs.store(self.connection).delete(*blobs.outputs_of(slot.job.id, slot.execution.id))
            except Exception as exc:  # noqa: BLE001 - they expire with the result TTL
                log.warning("could not delete the outputs of ended execution %s: %s", slot.execution.id, exc)

    @staticmethod
    def _timeout_of(job) -> float:
        timeout = job.timeout or DEFAULT_TIMEOUT_S
        return float("inf") if timeout == -1 else float(timeout)

    def beat(self) -> None:
        """Renew this worker, every running execution and its job in one pipeline."""
        self._next_beat = time.monotonic() + HEARTBEAT_EVERY_S
        slots = list(self.running.values())
        with self.connection.pipeline() as pipe:
            super(InkqWorker, self).heartbeat(self.job_monitoring_interval + 60, pipeline=pipe)
            for slot in slots:
                working = time.monotonic() - slot.started
                ttl = int(self.get_heartbeat_ttl(slot.job, working_time=working))
                beat_at = now()
                job_id, execution_id = slot.job.id, slot.execution.id
                self._heartbeat(keys=[slot.job.key, keys.executions_key(job_id), keys.execution_key(f"{job_id}:{execution_id}"),
                                      keys.started_key(slot.job.origin)],
                                args=[execution_id, f"{job_id}:{execution_id}", ttl, beat_at.timestamp(),
                                      utcformat(beat_at)], client=pipe)
            try:
                pipe.execute()
            except Exception as exc:  # the next round tries again; liveness is kept by its own thread
                log.warning("heartbeat of %d running jobs failed: %s", len(slots), exc)

    def _end_by_supervisor(self, slot: Slot, stopped: bool) -> None:
        """End a job whose thread is still running: stopped (cancel) or timed out; free its slot."""
        if not slot.claim("supervisor"):
            return
        _raise_in(slot.thread, Abandoned)
        self.detached.append(slot)
        try:
            job = Job.fetch(slot.job.id, connection=self.connection, serializer=self.serializer)
        except NoSuchJobError:  # erased meanwhile (tasks/erasure.py, which ended it): nothing left to end
            log.info("job %s is gone; its slot is freed", slot.job.id)
            self._release(slot)
            return
        job.started_at = slot.job.started_at
        setattr(job, EXECUTION_ATTR, slot.execution.id)
        with logs.bound(**_fields(job)):
            try:
                with self._finish_lock:
                    if stopped:  # as rq's `_handle_stopped_job`: STOPPED, never retried
                        self.end(job, slot.queue, slot.execution, "supervisor-stop",
                                 exc_string="Job stopped by user.", stopped=True)
                    else:
                        timeout = self._timeout_of(job)
                        exc = JobTimeoutException(f"Task exceeded maximum timeout value ({int(timeout)} seconds)")
                        log.warning("job ran past its timeout of %d s; ended, its thread detached", timeout)
                        from ..jobs import record_failure
                        record_failure(job, exc)
                        self.end(job, slot.queue, slot.execution, "supervisor-timeout",
                                 exc_string=format_exc_info((type(exc), exc, None)))
            except Exception:
                log.exception("could not end job %s", job.id)
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        self.executions.pop(slot.execution.id, None)
        with self._changed:
            self.running.pop(slot.execution.id, None)
            self._changed.notify_all()

    def start_execution(self, job, execution) -> bool:
        """rq's `prepare_job_execution` (the worker's heartbeat, the job marked started), the job's writes fenced
        by its execution (`job_start.lua`); False when the execution no longer owns the job, or the job is
        gone (erased) or has ended meanwhile: it is not run."""
        ttl = self.get_heartbeat_ttl(job)
        started = now()
        with self.connection.pipeline(transaction=False) as pipe:
            super(InkqWorker, self).heartbeat(ttl, pipeline=pipe)
            pipe.evalsha(self._start.sha, 2, job.key, keys.executions_key(job.id), execution.id, utcformat(started),
                         self.name)
            replies = pipe.execute(raise_on_error=False)
        if isinstance(replies[-1], NoScriptError):
            replies[-1] = self._start(keys=[job.key, keys.executions_key(job.id)], client=self.connection,
                                 args=[execution.id, utcformat(started), self.name])
        elif isinstance(replies[-1], Exception):
            raise replies[-1]
        if not replies[-1]:
            return False
        job.worker_name, job.last_heartbeat, job.started_at = self.name, started, started
        job._status = JobStatus.STARTED
        return True

    # --- a slot thread ----------------------------------------------------------------------------

    def _run(self, slot: Slot) -> None:
        """Run one job in this thread, as rq's `perform_job` does in a horse, minus the death penalty."""
        job, queue, execution = slot.job, slot.queue, slot.execution
        bind_job(job)
        try:
            try:
                if not self.start_execution(job, execution):
                    if slot.claim("thread"):
                        with self._finish_lock:
                            self.forget_execution(job, execution)
                    log.info("job %s is gone or has ended; not started", job.id)
                    return
                result, exc_info = job.perform(), None
            except Abandoned:
                return
            except BaseException:
                result, exc_info = None, sys.exc_info()
            if not slot.claim("thread"):
                return
            with self._finish_lock:
                if exc_info is None:
                    self.end(job, queue, execution, "worker", result=result)
                else:
                    self.handle_exception(job, *exc_info)
                    self.end(job, queue, execution, "worker", exc_string=format_exc_info(exc_info))
        except Abandoned:
            return
        except Exception:
            log.exception("slot for job %s failed outside the job", job.id)
        finally:
            try:
                if slot.ended_by == "thread":
                    self._release(slot)
                logs.clear()
            except Abandoned:  # delivered late, after the job was ended elsewhere
                pass

    # --- commands and stops -------------------------------------------------------------------------

    def handle_payload(self, message):
        """rq's commands, with `stop-job` and `stop-execution` aimed at the slot running that job."""
        payload = parse_payload(message)
        if payload.get("command") in ("stop-job", "stop-execution"):
            wanted = payload.get("execution_id")
            for slot in list(self.running.values()):
                if slot.job.id == payload.get("job_id") and wanted in (None, slot.execution.id):
                    slot.stop_requested = True
                    return
            log.info("not running job %s; stop ignored", payload.get("job_id"))
            return
        super().handle_payload(message)

    def _shutdown(self):
        """A warm stop: interrupt only a blocking dequeue; running jobs finish (`teardown`)."""
        self._stop_requested = True
        InkqQueue.stop_requested = True
        if InkqQueue.blocking:
            from rq.exceptions import StopRequested
            raise StopRequested()

    def request_force_stop(self, signum, frame):
        """rq's cold stop; the running jobs go back through the recovery sweep. A second signal within a
        second of the first is the same stop arriving twice (a SIGTERM to every process of the service,
        then the supervisor's own): rq ignores it, and so does this, or the warm stop turned cold."""
        if (now() - self._shutdown_requested_date) < timedelta(seconds=1):
            return super().request_force_stop(signum, frame)
        self._cold = True
        if self.running:
            log.warning("cold stop with %d jobs running: the recovery sweep queues them again", len(self.running))
        return super().request_force_stop(signum, frame)

    def teardown(self):
        """Let the running jobs finish (or reach their timeout), then rq's and InkqWorker's teardown."""
        if self.running and not self._cold:
            log.info("warm stop: waiting for %d running jobs", len(self.running))
            self.wait_for_slots(0)
        super().teardown()

    def get_current_job_id(self):
        """One running job's id (rq's dashboard shows one per worker; the started registry lists all)."""
        slot = next(iter(self.running.values()), None)
        return slot.job.id if slot else super().get_current_job_id()


def _fields(job) -> dict:
    meta = job.meta or {}
    return {"jobId": job.id, "queue": job.origin, "userId": meta.get("user"), "requestId": meta.get("requestId"),
            "attempt": int(meta.get("attempts") or 0)}


def _raise_in(thread: threading.Thread | None, exc_type: type[BaseException]) -> None:
    """Raise `exc_type` in `thread` at its next Python instruction (CPython's PyThreadState_SetAsyncExc)."""
    if thread is None or thread.ident is None or not thread.is_alive():
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))

