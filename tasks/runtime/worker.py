"""The rq worker base of the worker service, and the image stack imported once, before the forks.

The supervisor (`tasks/runtime/cli.py`) imports this module, then forks the CPU pool and one queue process per
queue, each running a `tasks.runtime.slots.SlotWorker` (this module's `InkqWorker`, with its jobs in threads).
Importing numpy/scipy/Pillow and the engines here, at import time, means they are loaded once per
service and shared copy-on-write by every process, instead of being imported by each of them.

`InkqWorker` holds the workarounds of rq's worker life cycle (stops, liveness, claims, the scheduler,
heartbeats) and its end of a job (`InkqWorker.end`, through `tasks/ending.py`); it runs no job itself: it is rq's `BaseWorker`, which forks no
work-horse, and `SlotWorker.execute_job` runs each job in a thread of its own process.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import threading
from datetime import timedelta

from redis import Redis
from redis.exceptions import RedisError, WatchError
from rq import worker_registration
from rq.connections import get_connection_kwargs
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import JobStatus
from rq.queue import Queue
from rq.utils import now as utcnow
from rq.worker import BaseWorker, WorkerStatus
from rq.job_lifecycle import call_exception_handlers, format_exc_info

from .. import ending
from ..core import blobs, fairness, keys, logs, metrics
from ..core.settings import current
from . import recovery
from .orphans import die_with_parent

log = logging.getLogger("inkq.worker")
PRELOAD = ("tasks.jobs", "tasks.images", "tasks.stencil", "tasks.enhance", "tasks.colormatch", "tasks.gemini",
           "tasks.webhooks")


def preload() -> None:
    """Import the job modules and build the S3 and Gemini clients (`gemini.warm`); a missing optional module
    is logged, not fatal."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.warning("could not preload %s: %s", name, exc)
    try:
        blobs.warm(current().store)
    except (ImportError, blobs.StoreConfigError) as exc:
        log.error("image store: %s", exc)
    try:
        from .. import gemini

        gemini.warm()
    except Exception as exc:  # noqa: BLE001 - the first call builds it then, and reports what fails
        log.warning("could not build the Gemini client ahead of the first call: %s", exc)


logs.configure(current().log.format, current().log.level)  # before rq sets up its own handlers, which it skips when the root logger has one
preload()

_stop_before_start = False


def _remember_stop(signum, frame) -> None:
    global _stop_before_start
    _stop_before_start = True


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def remember_stops() -> None:
    """In a newly forked queue process, before its worker exists: a SIGINT or SIGTERM is only remembered,
    and `InkqWorker.bootstrap` acts on it.

    The process inherits the supervisor's handlers, which act on the supervisor's copied state: a stop
    arriving before the worker installs its own was lost, the worker never stopped and the service
    waited for ever.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _remember_stop)


class InkqQueue(Queue):
    """An rq Queue whose dequeue moves the job id into the dequeuing worker's own claims list.

    rq 3.0 moves it with `BLMOVE` into the queue's shared intermediate list, which names no owner. A
    worker that dies between that move and the job's start, or one stopped while idle (Redis still
    serves the `BLMOVE` of the dying connection), strands the id there: rq fails it after a minute at
    its next maintenance run, never runs it (rq#2079, rq#2061), and `LLEN` no longer counts it. In
    `inkq:claims:<worker>` the owner is known, so the recovery sweep puts the id back at the head of
    its queue as soon as the owner's liveness key lapses (`tasks/runtime/recovery.py`).
    """

    claims_key: str | None = None  # the claims list of the worker in this process
    blocking = False  # inside the blocking dequeue, where a stop must interrupt the wait
    stop_requested = False
    holding = False  # a job was dequeued and is not yet handled
    _release_own = None

    @classmethod
    def dequeue_any(cls, *args, **kwargs):
        """rq's dequeue; the job taken is bound to this process's log lines (`bind_job`) until it is handled."""
        result = super().dequeue_any(*args, **kwargs)
        if result is not None:
            cls.holding = True
            bind_job(result[0])
        return result

    @classmethod
    def lmove(cls, connection, queue_key: str, timeout: int | None):
        """Move the next id into this worker's claims, after giving back any id it holds but never got.

        The next id is the fair order's (`tasks.core.fairness.take`: one script, the id lands in the claims
        list as BLMOVE would put it); only when nothing is queued does the worker block in BLMOVE, then
        tell the order which id it took."""
        if cls.claims_key is None:
            return super().lmove(connection, queue_key, timeout)
        if cls._release_own is None:
            cls._release_own = connection.register_script(recovery.RELEASE_OWN)
        cls._release_own(keys=[cls.claims_key, queue_key], args=recovery.RELEASE_OWN_ARGS, client=connection)
        queue = queue_key.removeprefix(keys.queue_key(""))
        result = fairness.take(connection, queue, cls.claims_key)
        if result is not None:
            return queue_key, result
        if timeout is None:
            return None
        cls.blocking = True
        try:
            if cls.stop_requested:  # asked to stop just before the wait
                raise StopRequested()
            result = connection.blmove(queue_key, cls.claims_key, timeout)
        finally:
            cls.blocking = False
        if result is None:
            raise DequeueTimeout(timeout, queue_key)
        fairness.taken(connection, queue, result.decode() if isinstance(result, bytes) else result)
        return queue_key, result


def _retry(job, queue, pipe) -> None:
    """rq 3.0's `Job.retry`, every write in `pipe`: rq's writes the scheduled status outside it, which a
    refused (late) end must not do."""
    interval = job.get_retry_interval()
    job.retries_left = job.retries_left - 1
    if interval:
        job.set_status(JobStatus.SCHEDULED, pipeline=pipe)
        queue.schedule_job(job, utcnow() + timedelta(seconds=interval), pipeline=pipe)
    else:
        queue._enqueue_job(job, pipeline=pipe, at_front=job.enqueue_at_front_on_retry)


def bind_job(job) -> None:
    """Every line this process logs about the job (in the thread that binds it) carries its id, queue,
    owner, attempt and the id of the request that submitted it."""
    meta = job.meta or {}
    logs.clear()
    logs.bind(jobId=job.id, queue=job.origin, userId=meta.get("user"), requestId=meta.get("requestId"),
              attempt=int(meta.get("attempts") or 0) + 1)


class Liveness(threading.Thread):
    """Keeps `inkq:alive:<worker>` alive, the worker listed under its queues and its slots published
    (`tasks.core.metrics.publish_slots`, read by /admin/queue-stats), with its queues' sums of live slots
    (`tasks.core.fairness.publish_slots_in`, read by the wait estimates), every second.

    A thread of its own, with its own connection and a short socket timeout, so a long job, a slow
    maintenance run or a long `BLMOVE` never lets the key lapse while the process lives.

    A worker frozen past its liveness (SIGSTOP, a paused VM) is forgotten by the recovery sweep, in rq's
    worker registry too. When a later beat finds it no longer listed under its queues, it calls `rejoin`
    (with its connection), which puts the worker back where rq and rq-dashboard look for it.
    """

    def __init__(self, connection: Redis, name: str, queue_names: list[str], slots: int = 1, rejoin=None):
        super().__init__(name="inkq-liveness", daemon=True)
        kwargs = {**get_connection_kwargs(connection), "socket_timeout": 2, "socket_connect_timeout": 2}
        self.redis = Redis(connection_pool=connection.connection_pool.__class__(
            connection_class=connection.connection_pool.connection_class, **kwargs))
        self.worker = name
        self.queue_names = queue_names
        self.slots = slots
        self.rejoin = rejoin
        self.listed = False  # a beat has listed the worker under its queues
        self.stopped = threading.Event()

    def beat(self) -> None:
        """Renew the liveness key, the listing and the published slots once."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.alive_key(self.worker), os.getpid(), px=keys.LIVENESS_TTL_MS)
            metrics.publish_slots(pipe, self.worker, self.slots)
            listings = []  # where each SADD's answer is: 1 when the worker was missing from the set
            for queue in self.queue_names:
                listings.append(len(pipe))
                pipe.sadd(keys.workers_key(queue), self.worker)
                fairness.publish_slots_in(pipe, queue, metrics.slots_key(""))
            answers = pipe.execute()
        forgotten = self.listed and any(answers[i] for i in listings)
        self.listed = True
        if forgotten and self.rejoin is not None:
            self.rejoin(self.redis)

    def run(self) -> None:
        while not self.stopped.wait(recovery.LIVENESS_EVERY_S):
            try:
                self.beat()
            except Exception as exc:  # the thread must outlive any error, or a live worker looks dead
                log.warning("worker %s could not renew its liveness: %s", self.worker, exc)

    def stop(self) -> None:
        """Stop renewing and delete the key: the worker is gone, its claims can go back now."""
        self.stopped.set()
        if self.is_alive():
            self.join(timeout=3)  # a beat in flight would bring the key back
        try:
            self.redis.delete(keys.alive_key(self.worker), metrics.slots_key(self.worker))
        except RedisError:
            pass  # it lapses on its own within LIVENESS_TTL_MS


SCHEDULER_STOP_TRIES = 5
SCHEDULER_STOP_WAIT_S = 2.5  # the scheduler reads its stop flag once a second (rq's interval)


def _default_stop_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def signals_for_main_thread_only():
    """Start threads inside this block: they inherit a mask that blocks SIGINT and SIGTERM.

    The kernel hands a process-directed signal to any thread that does not block it, and does so
    whenever the main thread already has one pending (SIGTERM from a group kill, then the supervisor's
    own). A stop delivered to rq's pub/sub thread or to the liveness thread never interrupts the main
    thread's `BLMOVE` read, and CPython runs the handler only when the main thread next executes
    Python: the worker slept through its stop for up to 405 s while its service waited. With the stop
    signals blocked in every helper thread, they always reach the main thread.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class InkqWorker(BaseWorker):
    """The base of `tasks.runtime.slots.SlotWorker`: an rq worker which hears a stop during start-up, which
    proves it is alive every second, whose scheduler always stops, and whose ends of jobs are fenced."""

    queue_class = InkqQueue
    liveness: Liveness | None = None
    slots = 1  # jobs run at once, published beside the liveness key; `tasks.runtime.slots.SlotWorker` sets its own

    def bootstrap(self, *args, **kwargs):
        """Install the shutdown handlers before start-up, not after it.

        rq installs them only once registration and the scheduler are done; a stop from the
        supervisor in between (a deploy that stops the service as it starts) is then lost in a
        KeyboardInterrupt, and the supervisor waits for that worker for ever.
        """
        self._install_signal_handlers()
        self._children_start_with_default_stops()
        if _stop_before_start:
            self.request_stop(signal.SIGINT, None)
        self.start_liveness()
        super().bootstrap(*args, **kwargs)

    @staticmethod
    def _children_start_with_default_stops() -> None:
        """In a process forked by this worker (its scheduler), SIGINT and SIGTERM start with their
        default action until the child installs its own handlers.

        Otherwise the child inherits the worker's `request_stop`, bound to a copy of the worker. rq's
        `stop_scheduler` SIGTERMs the scheduler and joins it; a SIGTERM landing before the scheduler
        installed its handlers only set a flag on that copy, the scheduler ran on, and the worker
        waited in `join()` for ever.
        """
        os.register_at_fork(after_in_child=_default_stop_signals)

    def stop_scheduler(self):
        """rq's stop of this worker's scheduler process (SIGTERM, then join), with the signal repeated
        until the scheduler ends, and SIGKILL as the last resort.

        rq sends one SIGTERM and joins for ever. A SIGTERM that lands in the scheduler between its
        fork and `_default_stop_signals` is caught by CPython's C handler, and by the time the
        interpreter runs the Python handler it is SIG_DFL, which CPython skips: the signal is dropped,
        the scheduler loops on, and the worker (so the service) never exits. Seen under load in the
        restart-race test, 1 stop in about 40.
        """
        process = getattr(self.scheduler, "_process", None) if self.scheduler else None
        if not process or not process.pid:
            return
        for _ in range(SCHEDULER_STOP_TRIES):
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGTERM)
            process.join(SCHEDULER_STOP_WAIT_S)
            if process.exitcode is not None:
                return
        log.warning("scheduler %s did not stop on SIGTERM; killing it", process.pid)
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGKILL)
        process.join()

    def start_liveness(self) -> None:
        """Prove this worker alive before its first dequeue, and keep proving it; dequeue into its claims."""
        die_with_parent(signal.SIGTERM)  # a worker whose supervisor is gone shuts down warmly
        self.liveness = Liveness(self.connection, self.name, self.queue_names(), self.slots, rejoin=self.rejoin)
        self.liveness.beat()
        with signals_for_main_thread_only():
            self.liveness.start()
        InkqQueue.claims_key = keys.claims_key(self.name)

    def rejoin(self, connection: Redis) -> None:
        """Back in rq's worker registry (`Worker.all`, rq-dashboard) after the
        recovery sweep forgot this worker as dead: frozen past its liveness, then resumed. Called by the
        liveness thread, on its own connection."""
        if self.birth_date is None:  # not registered yet: rq's own registration lists it
            return
        with connection.pipeline() as pipe:
            pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()
        log.warning("worker %s had been forgotten as dead (frozen past its liveness); listed again", self.name)

    def subscribe(self):
        """rq's command listener thread, started with SIGINT and SIGTERM blocked (see
        `signals_for_main_thread_only`)."""
        with signals_for_main_thread_only():
            super().subscribe()

    @property
    def dequeue_timeout(self) -> int:
        """Wake from `BLMOVE` every few seconds (rq: worker_ttl - 15 = 405 s), so a stop whose signal
        reached the process by any other path is acted on within that time (INKQ_DEQUEUE_WAIT_S)."""
        return current().dequeue_wait_s

    def teardown(self):
        """rq's teardown, then the liveness key goes: whatever this worker still claims goes back at once.

        With Redis unreachable the worker still leaves cleanly: its registration and liveness key lapse
        on their own, and the recovery sweep takes back whatever it held."""
        try:
            super().teardown()
        except RedisError as exc:
            log.warning("worker %s leaves without unregistering: Redis is unreachable (%s)", self.name, exc)
        finally:
            if self.liveness is not None:
                self.liveness.stop()

    def prepare_execution(self, job):
        """rq's `prepare_execution`, plus taking the id out of this worker's claims in the same transaction; None,
        and only the id taken out of the claims, for a job that is gone or has ended meanwhile.

        So an id is always in exactly one owned place: the queue, a worker's claims, or the started
        registry; the recovery sweep relies on it. The job's hash is watched: one erased or canceled between
        this worker's dequeue and its start (`tasks/erasure.py`, `api/store.py`) gets no execution, whose
        records would name an erased job again (rq would start it with the payload it had read).
        """
        with self.connection.pipeline() as pipeline:
            while True:
                try:
                    pipeline.watch(job.key)
                    status = pipeline.hget(job.key, "status")
                    pipeline.multi()
                    if InkqQueue.claims_key:
                        pipeline.lrem(InkqQueue.claims_key, 1, job.id)
                    if status is None or status in ending.ENDED:
                        pipeline.execute()
                        return None
                    execution = Execution.create(job, self.get_heartbeat_ttl(job), pipeline=pipeline,
                                                 worker_name=self.name)
                    self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
                    waited = metrics.seconds_between(job.enqueued_at, utcnow())
                    if waited is not None:
                        metrics.observe(self.connection, "wait", job.origin, waited, pipeline=pipeline)
                    pipeline.execute()
                    break
                except WatchError:
                    continue
        self.executions[execution.id] = execution
        return execution

    def end(self, job, queue, execution, by: str, result=None, exc_string: str | None = None,
            stopped: bool = False) -> bool:
        """End this worker's execution of a job through the one end path (`tasks.ending.finish`), fenced by
        its execution id: True if it ended the job, False if its end came late (the recovery sweep gave the
        job to another execution meanwhile, or it had ended) and was refused.

        `exc_string` None: completed with `result`; else failed, retried (retries left, not stopped) or,
        `stopped`, canceled. The rq writes are those of rq 3.0's `handle_job_success` and
        `handle_job_failure` (status, result, registries, counters, the execution's removal), in the end's
        transaction: rq runs a job's callbacks and writes its end in separate steps, and a worker lost
        between them left a half-ended job (the soak's `failed` job: the input dropped by the callback, the
        job still `started`, its re-run found no input). No rq callback is used; `job.retry`, which writes
        the scheduled status outside the given pipeline, is replaced by `_retry`.
        """
        job.ended_at = utcnow()
        job.get_meta(refresh=True)
        if exc_string is None:
            outcome = "completed"
        elif stopped or job.meta.get("canceled"):
            outcome = "canceled"  # stopped on request, or refused to start after a cancel
        elif job.should_retry:
            outcome = "retried"
        else:
            outcome = "failed"
        retries_left = job.retries_left

        def writes(pipe) -> None:
            job.retries_left = retries_left
            meta = {"worker_name": self.name, "execution_id": execution.id,
                    "execution_started_at": execution.created_at, "execution_ended_at": job.ended_at}
            if outcome == "completed":
                job._result = result
                result_ttl = job.get_result_ttl(self.default_result_ttl)
                if result_ttl != 0:
                    job._handle_success(result_ttl, pipeline=pipe, **meta)
                job.cleanup(result_ttl, pipeline=pipe, remove_from_queue=False)
                self.increment_successful_job_count(pipeline=pipe)
            elif outcome == "retried":
                _retry(job, queue, pipe)
                self.increment_failed_job_count(pipe)
            else:
                job.set_status(JobStatus.STOPPED if stopped else JobStatus.FAILED, pipeline=pipe)
                job._handle_failure(exc_string, pipeline=pipe, **meta)
                self.increment_failed_job_count(pipe)
            if outcome != "completed":  # what this execution stored is no result: a retry writes its own
                outputs = blobs.outputs_of(job.id, execution.id)
                pipe.delete(*outputs)
                pipe.zadd(blobs.EXPIRY_KEY, {key: 0 for key in outputs}, xx=True)  # S3: the blob sweep's
            if job.started_at:
                self.increment_total_working_time(job.ended_at - job.started_at, pipe)
            self.cleanup_execution(job, pipeline=pipe, execution=execution)

        ran = metrics.seconds_between(job.started_at, job.ended_at)
        done = ending.finish(self.connection, ending.Ending(job, outcome, by, ran), writes,
                             ending.execution_fence(job.id, execution.id))
        if done:
            log.info("job attempt %s", outcome, extra={"durationMs": round(ran * 1000, 1)} if ran is not None else None)
            if outcome != "retried":
                ending.drop_input_now(blobs.store(self.connection), job.id)
        else:
            ending.refused(self.connection, job, execution.id, by)
            self.forget_execution(job, execution)
        return done

    def handle_exception(self, job, *exc_info):
        """rq's log line of a job's exception, without the job's arguments.

        rq 3.0's `handle_exception` logs the traceback with `extra={'arguments': job.args, ...}`: under
        LOG_FORMAT=json every extra is a field of the line, so each failed attempt logged the job's spec,
        the user's prompt included, at ERROR. The line keeps the job, its function, queue and traceback."""
        try:
            func_name = job.func_name
        except Exception:  # noqa: BLE001 - a payload that cannot be read (rq's DeserializationError)
            func_name = "<unreadable>"
        log.error("job %s: exception raised while executing (%s)\n%s", job.id, func_name, format_exc_info(exc_info),
                  extra={"queue": job.origin})
        call_exception_handlers(self._exc_handlers, job, *exc_info)

    def forget_execution(self, job, execution) -> None:
        """After a refused end: remove only this execution's own bookkeeping (a resumed heartbeat may have
        written its record again) and its own output objects; never the job."""
        with self.connection.pipeline() as pipe:
            self.cleanup_execution(job, pipeline=pipe, execution=execution)
            pipe.execute()
        try:
            blobs.store(self.connection).delete(*blobs.outputs_of(job.id, execution.id))
        except Exception as exc:  # noqa: BLE001 - they expire with the result TTL anyway
            log.warning("could not delete the outputs of late execution %s: %s", execution.id, exc)

    def heartbeat(self, timeout=None, pipeline=None):
        """rq's heartbeat, where an idle worker asked to stop stops.

        rq's dequeue loop retries a lost Redis for ever, each round starting with a heartbeat and never
        looking at the stop flag: a worker stopped during a Redis outage (its service SIGTERMed, or its
        supervisor gone) never exited. The heartbeat opens every round of that loop and of the work
        loop, and rq's work loop ends on `StopRequested`. Not while a job is in hand: that one is
        handed to a slot first. Called without a pipeline, rq's three commands go in one round trip
        rather than three (each dequeue and each job start heartbeats).
        """
        if InkqQueue.stop_requested and not InkqQueue.holding:
            raise StopRequested()
        self.rq_heartbeat(timeout, pipeline)

    def rq_heartbeat(self, timeout=None, pipeline=None) -> None:
        """rq's own heartbeat; without a pipeline, its three commands in one round trip."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.execute()

    def work(self, *args, **kwargs):
        """Run the work loop; a stop requested during start-up ends it quietly."""
        try:
            return super().work(*args, **kwargs)
        except StopRequested:
            self.register_death()
            return False
