"""The worker class (`tasks.runtime.slots.SlotWorker` on `tasks.runtime.worker.InkqWorker`): every stop reaches it and
ends it, whenever it arrives, in a process of its own."""
from __future__ import annotations

import subprocess
import sys

from tests.servers import ROOT


def run_worker_program(program: str, redis_url: str) -> str:
    """Run a worker program in a process group of its own; fail on a non-zero exit, return its output."""
    done = subprocess.run([sys.executable, "-c", program, redis_url], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, start_new_session=True)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    return done.stdout


STOP_DURING_START = """
import os, signal, sys
from redis import Redis
from tasks.runtime.slots import SlotWorker
from tasks.runtime.worker import remember_stops
remember_stops()  # as in a newly forked queue process (tasks.runtime.cli.run_slot_worker)

class Probe(SlotWorker):
    def register_birth(self, *args, **kwargs):
        super().register_birth(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's stop, arriving mid start-up

worker = Probe(["enhance"], connection=Redis.from_url(sys.argv[1]))
print("work returned", worker.work(burst=False, with_scheduler=True))
"""


def test_stop_during_start_up_is_heard(redis_url):
    """rq installs its SIGINT/SIGTERM handlers only after start-up; a stop in between was lost."""
    assert "work returned False" in run_worker_program(STOP_DURING_START, redis_url)


STOP_BEFORE_START = """
import os, signal, sys
from redis import Redis
from tasks.runtime.worker import remember_stops
remember_stops()  # what a newly forked queue process does first (tasks.runtime.cli.run_slot_worker)
os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's stop, reaching it a moment after the fork
from tasks.runtime.slots import SlotWorker
worker = SlotWorker(["enhance"], connection=Redis.from_url(sys.argv[1]))
print("work returned", worker.work(burst=False, with_scheduler=True))
"""


def test_stop_before_the_worker_exists_is_heard(redis_url):
    """A stop that reaches a queue process before its worker exists is acted on once it starts."""
    assert "work returned False" in run_worker_program(STOP_BEFORE_START, redis_url)


STOP_AS_THE_SCHEDULER_STARTS = """
import signal, sys, time
from redis import Redis
from rq.scheduler import RQScheduler
from tasks.runtime.slots import SlotWorker

real_work = RQScheduler.work
def slow_work(self):
    time.sleep(1)  # a busy machine: the scheduler process is slow to reach its own handlers
    return real_work(self)
RQScheduler.work = slow_work

class Probe(SlotWorker):
    def _start_scheduler(self, *args, **kwargs):
        super()._start_scheduler(*args, **kwargs)
        self.request_stop(signal.SIGTERM, None)  # a stop right now: teardown SIGTERMs the new scheduler

worker = Probe(["enhance"], connection=Redis.from_url(sys.argv[1]))
print("work returned", worker.work(burst=False, with_scheduler=True))
"""


def test_stop_as_the_scheduler_starts_is_not_lost(redis_url):
    """rq's teardown SIGTERMs its scheduler process and joins it. A SIGTERM that reached the scheduler
    before it installed its own handlers ran the worker's inherited handler on a copy of the worker:
    the scheduler ran on and the worker joined it for ever. Children now start with default stops."""
    from redis import Redis

    own_db = redis_url.rsplit("/", 1)[0] + "/5"  # no other scheduler holds the lock here
    for _ in range(3):
        Redis.from_url(own_db).flushdb()
        assert "work returned False" in run_worker_program(STOP_AS_THE_SCHEDULER_STARTS, own_db)


SCHEDULER_DROPS_A_STOP = """
import signal, sys, time
from redis import Redis
from rq.scheduler import RQScheduler
from tasks.runtime.slots import SlotWorker

real_work = RQScheduler.work
def deaf_work(self):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(1.5)  # the worker's SIGTERM lands now and is lost
    return real_work(self)
RQScheduler.work = deaf_work

class Probe(SlotWorker):
    def _start_scheduler(self, *args, **kwargs):
        super()._start_scheduler(*args, **kwargs)
        self.request_stop(signal.SIGTERM, None)

worker = Probe(["enhance"], connection=Redis.from_url(sys.argv[1]))
started = time.monotonic()
print("work returned", worker.work(burst=False, with_scheduler=True), round(time.monotonic() - started))
"""


def test_a_scheduler_that_lost_its_stop_is_stopped_again(redis_url):
    """CPython drops a signal that reaches a forked child before its Python handler exists (the flag
    is cleared after fork, or the handler is SIG_DFL by the time the interpreter looks). rq sends its
    scheduler one SIGTERM and joins it for ever: the worker and so the service hung on stop
    (1 restart in about 40 under load). The stop is now repeated until the scheduler ends."""
    from redis import Redis

    own_db = redis_url.rsplit("/", 1)[0] + "/6"
    Redis.from_url(own_db).flushdb()
    out = run_worker_program(SCHEDULER_DROPS_A_STOP, own_db)
    assert "work returned False" in out, out
    assert int(out.split()[-1]) <= 10, out


IDLE_WORKER = """
import sys
from redis import Redis
from tasks.runtime.slots import SlotWorker
worker = SlotWorker(["enhance"], connection=Redis.from_url(sys.argv[1], socket_timeout=2, socket_connect_timeout=2))
print("work returned", worker.work(burst=False, with_scheduler=False), flush=True)
"""


def test_a_worker_stopped_during_a_redis_outage_exits():
    """rq retries a lost Redis for ever in its dequeue loop without looking at the stop flag: a worker
    SIGTERMed while Redis was down never exited (found as an orphan worker after a suite run)."""
    import os
    import signal
    import time

    import redis as redis_lib

    from tests.servers import RedisServer, wait_until

    server = RedisServer()
    proc = subprocess.Popen([sys.executable, "-c", IDLE_WORKER, server.url], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        client = redis_lib.Redis.from_url(server.url)
        wait_until(lambda: list(client.scan_iter("inkq:alive:*")), timeout=30, what="the worker to start")
        server.stop()
        time.sleep(3)  # the worker is now retrying Redis in rq's dequeue loop
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "work returned" in out, err[-2000:]
        assert "leaves without unregistering" in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("the worker did not exit after SIGTERM during the Redis outage")
