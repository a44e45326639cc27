"""Nothing lost, nothing stuck: jobs survive worker restarts, crashes and lost machines.

Every test here runs real worker services (`scripts/start_workers.sh`) on a Redis of its own, the
API over real HTTP, and kills them with real signals. The RQ behaviours inkq works around have their
own regression tests at the top (`InkqQueue`, `tasks/runtime/recovery.py`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis as redis_lib
from rq import Queue
from rq.serializers import JSONSerializer

from tasks.core import blobs, keys
from tasks.core.errors import CRASH_FAILURE
from tasks.core.queues import QUEUE_NAMES
from tasks.runtime import recovery
from tests import fakegemini as fg
from tests.conftest import ADMIN_TOKEN, photo
from tests.servers import ROOT, Stack, wait_until


@pytest.fixture
def gemini():
    with fg.FakeGemini() as fake:
        yield fake


@pytest.fixture
def stack(tmp_path, gemini):
    made = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    yield made
    made.close()


@pytest.fixture
def credit_stack(tmp_path, gemini):
    made = Stack(tmp_path, gemini.url, CREDITS_ENABLED="true", CREDITS_INITIAL=1000, MAX_INFLIGHT_PER_USER=1000)
    yield made
    made.close()


def _log_lines(stack: Stack, job_ids) -> list[str]:
    """The worker services' log lines that name any of these jobs (for a failure's message)."""
    lines = []
    for log in sorted(stack.tmp_path.glob("workers-*.log")):
        lines += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()
                  if any(job_id in line for job_id in job_ids)]
    return lines


def _explained(stack: Stack, ended: dict[str, dict]) -> str:
    """Each job's status, attempts and error, then the worker log lines that name it."""
    lines = [f"{job_id}: {body['status']} after {body['attempts']} attempts: {body.get('error')}"
             for job_id, body in ended.items()]
    return "\n".join(lines + _log_lines(stack, ended))


def _wait_in_call(stack: Stack, job_id: str, gemini, calls: int = 1) -> dict:
    """Wait until the job runs and its request has reached the (fake) provider."""
    def in_call():
        body = stack.api.get(f"/status/{job_id}").json()
        return body if body["status"] == "active" and len(gemini.requests) >= calls else None
    return wait_until(in_call, timeout=60, interval=0.05, what=f"job {job_id} to call the provider")


def _kill_and_time(stack: Stack, service, job_id: str, timeout: float = 30) -> tuple[dict, float]:
    """SIGKILL a worker service; the job's final status, and the seconds from the kill to it."""
    killed_at = time.monotonic()
    service.kill()
    body = stack.wait_all([job_id], timeout=timeout)[job_id]
    return body, time.monotonic() - killed_at


# --- the RQ behaviours worked around -------------------------------------------------------------

DEQUEUE_THEN_DIE = """
import os, sys, time
from redis import Redis
from rq import Queue
from tasks.core import blobs, keys
from tasks.runtime.worker import InkqQueue
redis = Redis.from_url(sys.argv[1])
if sys.argv[2] == "inkq":
    # what InkqWorker.start_liveness does, minus the thread: alive for 1.5 s, then lapsed
    InkqQueue.claims_key = keys.claims_key("w-dead")
    redis.sadd(keys.workers_key("enhance"), "w-dead")
    redis.set(keys.alive_key("w-dead"), os.getpid(), px=1500)
    queue_class = InkqQueue
else:
    queue_class = Queue
print("dequeuing", flush=True)
job, queue = queue_class.dequeue_any([queue_class("enhance", connection=redis)], 30, connection=redis)
print("took", job.id, flush=True)
time.sleep(60)  # killed here: after the dequeue, before the job starts
"""


def _dequeue_then_die(redis_url: str, kind: str, redis, ids: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DEQUEUE_THEN_DIE, redis_url, kind], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "dequeuing"
    time.sleep(0.3)  # it is blocked in BLMOVE
    queue = Queue("enhance", connection=redis, serializer=JSONSerializer)
    for job_id in ids:
        queue.enqueue("tasks.jobs.enhance", {}, job_id=job_id)
    assert proc.stdout.readline().split() == ["took", ids[0]]
    proc.kill()
    proc.wait()


def test_rq_strands_an_id_dequeued_by_a_worker_that_dies(redis_server):
    """rq 3.0: the id sits in the shared intermediate list, out of the queue, and rq's own clean-up
    leaves it there on its first pass (it only fails it a minute later). This is what InkqQueue avoids."""
    from rq.intermediate_queue import IntermediateQueue
    from rq.worker import Worker

    url = redis_server.url.rsplit("/", 1)[0] + "/1"
    redis = redis_lib.Redis.from_url(url)
    redis.flushdb()
    _dequeue_then_die(url, "rq", redis, ["a" * 32, "b" * 32])
    queue = Queue("enhance", connection=redis, serializer=JSONSerializer)
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [b"a" * 32]
    assert queue.job_ids == ["b" * 32]
    IntermediateQueue(queue.key, redis).cleanup(Worker([queue], connection=redis), queue)
    assert redis.lrange(queue.intermediate_queue_key, 0, -1) == [b"a" * 32]  # still stranded
    redis.flushdb()


def test_an_id_claimed_by_a_worker_that_dies_goes_back_to_the_head_in_order(redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/2"
    redis = redis_lib.Redis.from_url(url)
    redis.flushdb()
    ids = ["c" * 32, "d" * 32, "e" * 32]
    _dequeue_then_die(url, "inkq", redis, ids)
    assert redis.lrange(keys.claims_key("w-dead"), 0, -1) == [ids[0].encode()]
    sweeper = recovery.Recovery(redis, ["enhance"])
    assert sweeper.sweep().counts["released"] == 0  # its liveness has not lapsed yet: never judged
    wait_until(lambda: not redis.exists(keys.alive_key("w-dead")), timeout=5)
    result = sweeper.sweep()
    assert result.counts["released"] == 1
    assert Queue("enhance", connection=redis, serializer=JSONSerializer).job_ids == ids  # head, in order
    assert not redis.exists(keys.claims_key("w-dead"))
    assert not redis.sismember(keys.workers_key("enhance"), "w-dead")
    redis.flushdb()


def test_a_claim_whose_reply_was_lost_is_given_back_before_the_next_dequeue(redis_server):
    """A BLMOVE served by Redis whose reply never reached the worker (connection reset) leaves an id
    in the claims of a live worker; its next dequeue puts it back first and takes it again."""
    from tasks.runtime.worker import InkqQueue

    redis = redis_lib.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    redis.flushdb()
    queue = Queue("enhance", connection=redis, serializer=JSONSerializer)
    first, second = queue.enqueue("tasks.jobs.enhance", {}), queue.enqueue("tasks.jobs.enhance", {})
    claims = keys.claims_key("w-live")
    redis.lmove(queue.key, claims)  # served, reply lost
    try:
        InkqQueue.claims_key = claims
        job, _ = InkqQueue.dequeue_any([InkqQueue("enhance", connection=redis, serializer=JSONSerializer)], 1,
                                       connection=redis, serializer=JSONSerializer)
    finally:
        InkqQueue.claims_key = None
    assert job.id == first.id
    assert redis.lrange(claims, 0, -1) == [first.id.encode()]
    assert queue.job_ids == [second.id]
    redis.flushdb()


# --- whole services, real signals ---------------------------------------------------------------

def test_restart_race_strands_nothing(stack):
    """(a) SIGTERM an idle worker service and submit in the next 100 ms, 20 times: every job runs.
    Half the time the signal goes to the supervisor only (Docker, fly.io), half the time to its whole
    process group (Ctrl-C, systemd's default KillMode)."""
    service = stack.workers()
    ids = []
    for trial in range(20):
        if trial % 2:
            os.killpg(service.proc.pid, signal.SIGTERM)
        else:
            service.proc.send_signal(signal.SIGTERM)
        # one local stencil (its engine runs in the CPU pool) and five provider ones (slot threads); all
        # local, the 120 jobs cost 6 minutes of CPU and the test timed its machine, not the recovery
        ids += stack.submit_stencils(1) + stack.submit_stencils(5, spacing_s=0.015, engine="gemini")
        following = stack.workers(wait=False)  # as in a rolling deploy: the next one starts as this one stops
        assert service.proc.wait(30) == 0
        stack.ready(following)
        service = following
    final = stack.wait_all(ids, timeout=120)
    assert {body["status"] for body in final.values()} == {"completed"}, final
    wait_until(lambda: not stack.leftovers(), timeout=10, what="claims and intermediate lists to empty")
    print(f"restart race: 20 restarts, {len(ids)} jobs, recovery stats {stack.stats()}")


def test_soak_with_restarts_and_kills(credit_stack):
    """(b) Steady submissions through 8 restarts of the worker service, 2 of them SIGKILL: every job
    completes, is charged once, and no id is left in an intermediate or claims list."""
    stack = credit_stack
    service = stack.workers(LOG_LEVEL="INFO")  # each attempt's start is logged, for a failure's message
    ids: list[str] = []
    stop = threading.Event()

    def submit():
        n = 0
        while not stop.is_set():  # one in four a local stencil (CPU pool), the others provider calls (slots)
            ids.extend(stack.submit_stencils(1, engine="gemini" if n % 4 else "local"))
            n += 1
            time.sleep(0.3)
    feeder = threading.Thread(target=submit, daemon=True)
    feeder.start()
    kills = {2, 5}
    try:
        for restart in range(8):
            time.sleep(1.5)
            if restart in kills:
                service.kill()
            else:
                service.proc.send_signal(signal.SIGTERM)
                assert service.proc.wait(30) == 0
            service = stack.workers(LOG_LEVEL="INFO")
        time.sleep(1.0)
    finally:
        stop.set()
        feeder.join(10)
    final = stack.wait_all(ids, timeout=600, stall_s=60)  # a loaded box only slows the drain
    failed = {job_id: body for job_id, body in final.items() if body["status"] != "completed"}
    assert not failed, _explained(stack, failed)
    assert stack.api.get("/credits").json()["balance"] == 1000 - len(ids)
    assert list(stack.redis.scan_iter("inkq:charge:*")) == []
    wait_until(lambda: not stack.leftovers(), timeout=10, what="claims and intermediate lists to empty")
    assert sum(stack.redis.zcard(keys.started_key(q)) for q in QUEUE_NAMES) == 0
    attempts = [body["attempts"] for body in final.values()]
    print(f"soak: {len(ids)} jobs, 8 restarts (2 SIGKILL), max attempts {max(attempts)}, "
          f"recovery stats {stack.stats()}")


LOST_AS_THE_JOB_ENDS = """
import os, signal, sys
from redis import Redis
from rq.serializers import JSONSerializer
from tasks.runtime.slots import SlotWorker
from tasks.runtime.worker import InkqQueue

class Probe(SlotWorker):
    def end(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # lost here: the job ran, its end is not written

redis = Redis.from_url(sys.argv[1])
queue = InkqQueue("stencil-generation", connection=redis, serializer=JSONSerializer)
Probe([queue], connection=redis, serializer=JSONSerializer, slots=1).work()
"""


def test_a_worker_lost_as_its_job_ends_leaves_the_input_for_the_run_again(credit_stack):
    """A worker lost as its job ends leaves the job `started`, and the sweep runs it again. rq ran a job's
    success callback, which dropped its input, before it wrote the job's end, so that run failed ("The
    input image expired before the job could run"): the soak's one failed job in 30-60 runs. The input is
    now dropped only inside the end's one transaction (`tasks/ending.py`): the job runs again and
    completes, charged once."""
    stack = credit_stack
    job_id = stack.submit_stencils(1)[0]
    lost = subprocess.run([sys.executable, "-c", LOST_AS_THE_JOB_ENDS, stack.server.url], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, env={**os.environ, "REDIS_URL": stack.server.url},
                          start_new_session=True)
    assert lost.returncode == -signal.SIGKILL, lost.stderr[-2000:]
    assert stack.redis.hget(f"rq:job:{job_id}", "status") == b"started"
    stack.workers()  # its sweep finds the lost worker's job and queues it again
    body = stack.wait_all([job_id], timeout=60)[job_id]
    assert body["status"] == "completed" and body["attempts"] == 2, _explained(stack, {job_id: body})
    assert stack.api.get("/credits").json()["balance"] == 1000 - 1
    wait_until(lambda: not stack.redis.exists(blobs.input_key(job_id)), timeout=5, what="the input to be dropped")


def test_failover_to_another_worker_service(credit_stack, gemini):
    """(c) Two worker services on one Redis; the one running a job is SIGKILLed and never restarted;
    the other finishes the job within 15 s of the kill, charged once."""
    stack = credit_stack
    first = stack.workers(stencil=1)
    gemini.push(fg.slow(120))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a swallow"}).json()["jobId"]
    _wait_in_call(stack, job_id, gemini)
    second = stack.workers(stencil=1)
    meta_pid = json.loads(stack.redis.hget(f"rq:job:{job_id}", "meta"))["pid"]  # the process running it
    body, took = _kill_and_time(stack, first, job_id)
    assert body["status"] == "completed" and body["attempts"] == 2, body
    assert took <= 15, took
    wait_until(lambda: not os.path.exists(f"/proc/{meta_pid}"), timeout=5,
               what="the dead service's process running the job to die")
    assert stack.api.get("/credits").json()["balance"] == 1000 - 2  # ia-gen costs 2, once
    assert second.proc.poll() is None
    assert stack.redis.hget("inkq:metrics", "c|ia-gen|recovered") == b"1"  # /metrics: inkq_jobs_total
    assert stack.redis.hget("inkq:metrics", "c|ia-gen|completed") == b"1"
    print(f"failover: job completed {took:.1f}s after its worker service was SIGKILLed")


def test_dead_workers_job_with_no_retries_left_fails_and_is_refunded(credit_stack, gemini, receiver):
    url, calls = receiver
    stack = credit_stack
    stack.workers(stencil=1)
    stack.workers(stencil=1)
    gemini.push(fg.slow(120))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a rose",
                                               "webhookUrl": url}).json()["jobId"]
    _wait_in_call(stack, job_id, gemini)
    assert stack.api.get("/credits").json()["balance"] == 998
    stack.redis.hset(f"rq:job:{job_id}", "retries_left", 0)  # as if its retries were used up
    # as if its input were an S3 object (tasks/core/blobs.py): due in an hour, until the job ends
    stack.redis.zadd(blobs.EXPIRY_KEY, {blobs.input_key(job_id): time.time() + 3600, "inkq:blob:out:other": 1e12})
    # which service runs it does not matter: kill the one whose worker holds it
    worker = stack.redis.hget(f"rq:job:{job_id}", "worker_name").decode()
    pid = int(stack.redis.get(keys.alive_key(worker)))
    holder = next(s for s in stack.services if os.getpgid(pid) == s.proc.pid)
    killed_at = time.monotonic()
    holder.kill()
    # watched in Redis only: an API read would settle the refund itself
    wait_until(lambda: stack.redis.hget(f"rq:job:{job_id}", "status") == b"failed", timeout=30, interval=0.05)
    took = time.monotonic() - killed_at
    assert stack.redis.get("inkq:credits:alice") == b"1000"  # ended and refunded in the same step
    assert stack.redis.zscore(blobs.EXPIRY_KEY, blobs.input_key(job_id)) == 0  # its input is due now, for the blob sweep
    assert stack.redis.zscore(blobs.EXPIRY_KEY, "inkq:blob:out:other") == 1e12
    assert took <= 10, took
    body = stack.api.get(f"/status/{job_id}").json()
    assert body["status"] == "failed" and body["error"] == CRASH_FAILURE, body
    _, hook = calls.get(timeout=15)
    assert json.loads(hook)["jobId"] == job_id and json.loads(hook)["status"] == "failed"
    print(f"no retries left: failed and refunded {took:.1f}s after the kill")


def test_slow_job_on_a_live_worker_is_not_run_twice(stack, gemini):
    """(d) A 20 s job on a live worker is never taken for a dead one's."""
    stack.workers(stencil=1)
    stack.workers(stencil=1)  # a second service that could take it if it were wrongly released
    gemini.push(fg.slow(20))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a slow koi"}).json()["jobId"]
    body = stack.wait_all([job_id], timeout=60)[job_id]
    assert body["status"] == "completed" and body["attempts"] == 1, body
    assert len(gemini.requests) == 1
    assert not any(stack.stats().values()), stack.stats()


def test_a_retry_scheduled_on_a_lost_service_still_runs(credit_stack, gemini):
    """rq's scheduler lock of a SIGKILLed service lingers 61 s, and a live worker takes it over only at
    its next 10-minute maintenance run; the sweep moves the due retry itself once the lock is stale."""
    stack = credit_stack
    first = stack.workers(stencil=1)  # starts first: its scheduler holds every queue's lock
    gemini.push(fg.error(503, retry_delay="20s"))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a moth"}).json()["jobId"]
    wait_until(lambda: stack.redis.zscore("rq:scheduled:ia-gen", job_id), timeout=30, what="the retry to be scheduled")
    stack.workers(stencil=1)
    assert stack.redis.pttl("rq:scheduler-lock:ia-gen") > 50_000  # held, by the first service
    due_in = stack.redis.zscore("rq:scheduled:ia-gen", job_id) - time.time()
    assert due_in > 5, due_in  # still waiting for its retry when the service dies
    body, took = _kill_and_time(stack, first, job_id, timeout=60)
    assert body["status"] == "completed" and body["attempts"] == 2, body
    assert took <= max(due_in, 10) + 5, (took, due_in)
    assert stack.stats().get("scheduled") == 1
    print(f"scheduled retry of a lost service: completed {took:.1f}s after the kill")


def test_claimed_ids_count_as_waiting(tmp_path, gemini):
    """An id a worker has taken off the queue but not started is still waiting: for
    `/admin/queue-stats` and for `QUEUE_MAX_DEPTH`."""
    stack = Stack(tmp_path, gemini.url, QUEUE_MAX_DEPTH=2, MAX_INFLIGHT_PER_USER=100)
    try:
        stack.submit_stencils(2)
        stack.redis.sadd(keys.workers_key("stencil-generation"), "w-busy")
        stack.redis.set(keys.alive_key("w-busy"), 1, px=60_000)
        stack.redis.lmove("rq:queue:stencil-generation", keys.claims_key("w-busy"))  # its BLMOVE
        assert stack.redis.llen("rq:queue:stencil-generation") == 1
        stats = stack.api.get("/admin/queue-stats", token=ADMIN_TOKEN).json()
        assert stats["stencil-generation"]["waiting"] == 2
        refused = stack.api.submit(photo((96, 96)), engine="local")
        assert refused.status_code == 503 and refused.json()["code"] == "queue_full"
    finally:
        stack.close()


# --- one end per job (tasks/ending.py) -------------------------------------------------------------

def _processes_of(service) -> list[int]:
    """Every process of a worker service: its process group and any descendant that left it (the CPU
    pool starts sessions of its own)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [service.proc.pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _holder(stack: Stack, job_id: str):
    """The worker service whose worker runs the job."""
    worker = stack.redis.hget(f"rq:job:{job_id}", "worker_name").decode()
    pid = int(stack.redis.get(keys.alive_key(worker)))
    return next(s for s in stack.services if os.getpgid(pid) == s.proc.pid)


def test_a_frozen_workers_late_result_changes_nothing(credit_stack, gemini):
    """Two worker services; the one running a 10 s provider job is frozen (SIGSTOP, every process) for
    25 s; the other runs the job again and completes it. Once the frozen one resumes and finishes its
    copy, nothing changes: status, endedAt, result bytes, attempts, balance; the late end is logged and
    counted (`inkq_jobs_total{outcome="late"}`). The frozen service's workers, forgotten as dead by the
    sweep meanwhile, are back in rq's worker registry (rq-dashboard's workers page) once resumed."""
    stack = credit_stack
    stack.workers(stencil=1)
    stack.workers(stencil=1)
    gemini.push(fg.slow(10, fg.ok(fg.sample_png(48))))  # the frozen run's answer; the re-run's is 64 px
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a fox"}).json()["jobId"]
    _wait_in_call(stack, job_id, gemini)
    frozen = _processes_of(_holder(stack, job_id))
    names = {w.decode() for q in QUEUE_NAMES for w in stack.redis.smembers(keys.workers_key(q))
             if int(stack.redis.get(keys.alive_key(w.decode())) or 0) in frozen}
    assert len(names) >= 4, names  # one per queue at least
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        body = stack.wait_all([job_id], timeout=30)[job_id]
        assert body["status"] == "completed" and body["attempts"] == 2, body
        result = stack.api.get(f"/result/{job_id}").content
        balance = stack.api.get("/credits").json()["balance"]
        assert balance == 1000 - 2
        assert not names & _dashboard_workers(stack), "the sweep forgot the frozen workers"
        time.sleep(max(0.0, 25 - (time.monotonic() - stopped_at)))
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: stack.redis.hget("inkq:metrics", "c|ia-gen|late") == b"1", timeout=30,
               what="the frozen copy's end to be refused")
    assert any("late end of job" in line for line in _log_lines(stack, [job_id]))
    after = stack.api.get(f"/status/{job_id}").json()
    for status in (body, after):
        status["result"].pop("image")  # a link signed at each read
    assert after == body, (body, after)
    assert stack.api.get(f"/result/{job_id}").content == result
    assert stack.api.get("/credits").json()["balance"] == balance
    assert stack.redis.hget("inkq:metrics", "c|ia-gen|completed") == b"1"
    assert len(list(stack.redis.scan_iter(blobs.output_key(job_id) + "/*"))) == 1  # the late copy's went
    wait_until(lambda: names <= _dashboard_workers(stack), timeout=10, what="the resumed workers to be listed again")


def _dashboard_workers(stack: Stack) -> set[str]:
    """The workers rq-dashboard lists."""
    response = stack.api.get("/admin/rq/0/data/workers.json", token=ADMIN_TOKEN)
    assert response.status_code == 200, response.text
    return {w["name"] for w in response.json()["workers"]}


def test_a_supervisor_lost_right_after_the_sweep_loses_no_webhook(credit_stack, gemini, receiver):
    """The sweep's end of a job and its webhook's enqueue are one step: a supervisor that dies right
    after its sweep script (the script is run here, as that supervisor's last act) leaves the end to
    the next supervisor, which delivers the webhook and refunds the job."""
    url, calls = receiver
    stack = credit_stack
    service = stack.workers(stencil=1)
    gemini.push(fg.slow(120))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a wren",
                                               "webhookUrl": url}).json()["jobId"]
    _wait_in_call(stack, job_id, gemini)
    stack.redis.hset(f"rq:job:{job_id}", "retries_left", 0)  # as if its retries were used up
    worker = stack.redis.hget(f"rq:job:{job_id}", "worker_name").decode()
    service.kill()  # no supervisor left
    wait_until(lambda: not stack.redis.exists(keys.alive_key(worker)), timeout=10, what="its liveness to lapse")
    assert recovery.Recovery(stack.redis).sweep().ended == [(job_id, "failed")]
    assert calls.empty()
    stack.workers(stencil=1)  # the next supervisor
    _, hook = calls.get(timeout=15)
    assert json.loads(hook)["jobId"] == job_id and json.loads(hook)["status"] == "failed"
    assert stack.redis.hget(f"rq:job:{job_id}", "status") == b"failed"
    assert stack.redis.get("inkq:credits:alice") == b"1000"
    assert stack.redis.hlen(recovery.ENDING_KEY) == 0
