"""Jobs in threads (`tasks/runtime/slots.py`): real worker services, the API over HTTP, the fake Gemini.

Each behaviour the threaded path has to add over rq's forked horses has a test here: several jobs
at once in one process with their own `get_current_job()` and log fields, the dashboard listing them
all, a heartbeat per execution, the per-job timeout, cancel, and warm stops.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from tasks import webhooks
from tasks.core import blobs, keys
from tasks.core.errors import TIMEOUT_FAILURE
from tests import fakegemini as fg
from tests.conftest import ADMIN_TOKEN, photo
from tests.servers import Stack, wait_until


@pytest.fixture(scope="module")
def gemini():
    with fg.FakeGemini() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh(gemini):
    gemini.reset()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, gemini):
    made = Stack(tmp_path_factory.mktemp("slots"), gemini.url, MAX_INFLIGHT_PER_USER=1000)
    # no HTTP timeout to speak of: only the supervisor can end a call that never answers
    made.workers(stencil=3, ia_gen=1, GEMINI_TIMEOUT_S="600", LOG_LEVEL="INFO")
    yield made
    made.close()


def _in_call(stack, gemini, job_id, calls=1):
    def check():
        body = stack.api.get(f"/status/{job_id}").json()
        return body["status"] == "active" and len(gemini.requests) >= calls
    wait_until(check, timeout=30, interval=0.05, what=f"job {job_id} in its provider call")


def _log_lines(stack) -> list[dict]:
    lines = []
    for path in stack.tmp_path.glob("workers-*.log"):
        for raw in path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
    return lines


def test_provider_jobs_run_at_once_in_one_process_each_with_its_own_job(stack, gemini):
    """Three Gemini stencils at once in one process: each job's `get_current_job()` is its own (its
    result lands under its own id, its progress is its own), its log lines carry its own id, and
    rq-dashboard lists all three as started."""
    gemini.default = fg.slow(2.0)
    ids = [stack.api.submit(photo((64 + 8 * i, 64)), engine="gemini").json()["jobId"] for i in range(3)]
    wait_until(lambda: len(gemini.requests) == 3, timeout=30, what="three calls in flight")
    started = stack.api.get("/admin/rq/0/data/jobs/stencil-generation/started/20/asc/1.json",
                            token=ADMIN_TOKEN).json()
    assert {job["id"] for job in started["jobs"]} == set(ids)
    pids = {json.loads(stack.redis.hget(f"rq:job:{job_id}", "meta"))["pid"] for job_id in ids}
    assert len(pids) == 1  # one process, three threads
    final = stack.wait_all(ids, timeout=30)
    for job_id, body in final.items():
        assert body["status"] == "completed" and body["attempts"] == 1, body
        assert body["progress"] == 100
        assert list(stack.redis.scan_iter(blobs.output_key(job_id) + "/*"))  # under its id and execution
    sent = sorted(request.images[0] for request in gemini.requests)
    assert len(set(sent)) == 3  # each job sent its own input
    calls = [line["jobId"] for line in _log_lines(stack)
             if line.get("logger") == "inkq.gemini" and line.get("jobId") in ids]
    assert sorted(calls) == sorted(ids)


def test_every_running_execution_is_heartbeaten(stack, gemini):
    """rq heartbeats an execution only from its horse monitor; a thread's execution must be renewed
    by the supervisor, or the started registry drops it as abandoned after its TTL."""
    gemini.push(fg.slow(7.5))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a heron"}).json()["jobId"]
    _in_call(stack, gemini, job_id)

    def score():
        members = stack.redis.zrange(keys.started_key("ia-gen"), 0, -1, withscores=True)
        return next(s for m, s in members if m.decode().startswith(job_id))
    first = score()
    time.sleep(6.5)
    assert score() > first + 3
    assert stack.wait_all([job_id], timeout=30)[job_id]["status"] == "completed"


def test_a_provider_that_never_answers_ends_at_the_job_timeout_and_frees_the_slot(stack, gemini):
    """A call that never answers (no HTTP timeout here) is ended by the supervisor at the job's own
    timeout and retried; the retry runs on the same single slot while the first call still hangs."""
    gemini.push(fg.slow(120))
    queue = Queue("ia-gen", connection=stack.redis, serializer=JSONSerializer)
    job = queue.enqueue("tasks.jobs.ia_gen", {"operation": "ia-gen", "userId": "alice", "params": {"prompt": "x"}},
                        job_timeout=3, retry=Retry(max=1))
    started = time.monotonic()
    wait_until(lambda: job.get_status(refresh=True) == "finished", timeout=30, interval=0.1,
               what="the retried job to finish")
    took = time.monotonic() - started
    job.refresh()
    assert job.meta["attempts"] == 2, job.meta
    assert len(gemini.requests) == 2
    assert 3 <= took < 20, took


def test_a_timed_out_job_with_no_retry_left_fails_with_the_timeout_message(stack, gemini):
    gemini.push(fg.slow(120))
    queue = Queue("ia-gen", connection=stack.redis, serializer=JSONSerializer)
    job = queue.enqueue("tasks.jobs.ia_gen", {"operation": "ia-gen", "userId": "alice", "params": {"prompt": "x"}},
                        job_timeout=2)
    wait_until(lambda: job.get_status(refresh=True) == "failed", timeout=20, interval=0.1, what="the job to fail")
    assert job.get_meta(refresh=True)["error"] == TIMEOUT_FAILURE
    assert job.id in queue.failed_job_registry.get_job_ids()
    assert not stack.redis.zcard(keys.started_key("ia-gen"))


def test_cancel_of_a_running_provider_job(stack, gemini):
    """DELETE stops a job whose thread is blocked in its call; the slot is free for the next job at once."""
    gemini.push(fg.slow(120))
    job_id = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a wolf"}).json()["jobId"]
    _in_call(stack, gemini, job_id)
    response = stack.api.delete(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert stack.api.get(f"/status/{job_id}").json()["status"] == "canceled"
    nxt = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": "a fox"}).json()["jobId"]
    assert stack.wait_all([nxt], timeout=20)[nxt]["status"] == "completed"
    assert stack.api.get(f"/status/{job_id}").json()["status"] == "canceled"


def test_a_canceled_running_job_ends_canceled_with_its_webhook(stack, gemini):
    """The supervisor ends a canceled running job through the one end path (`tasks/ending.py`): the job
    is `STOPPED`, its "canceled" webhook delivery is queued in the same transaction, and its input is
    dropped."""
    gemini.push(fg.slow(120))
    job_id = stack.api.submit(photo((64, 64)), engine="gemini", webhookUrl="http://127.0.0.1:9/hook").json()["jobId"]
    _in_call(stack, gemini, job_id)
    assert stack.redis.exists(blobs.input_key(job_id))
    assert stack.api.delete(f"/jobs/{job_id}").status_code == 200
    assert stack.redis.hget(f"rq:job:{job_id}", "status") == b"stopped"
    meta = json.loads(stack.redis.hget(f"rq:job:{job_id}", "meta"))
    assert meta["webhook"]["eventId"] == webhooks.event_id(job_id, "canceled")
    wait_until(lambda: not stack.redis.exists(blobs.input_key(job_id)), timeout=5, what="the input to be dropped")


@pytest.mark.parametrize("target", ["supervisor", "group", "group-twice"])
def test_a_stop_lets_the_calls_in_flight_finish(tmp_path, gemini, target):
    """SIGTERM to the service's main process, or to every process of it (systemd's KillMode=control-group),
    with two calls in flight and a slot free (so the worker is waiting for work, not for a slot): both
    finish, each with one attempt and one call, then the service exits 0."""
    stack = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    try:
        service = stack.workers(stencil=1, ia_gen=3)
        gemini.push(fg.slow(3), fg.slow(6))
        ids = [stack.api.post("/generate", json={"operation": "ia-gen", "prompt": f"a bird {i}"}).json()["jobId"]
               for i in range(2)]
        wait_until(lambda: len(gemini.requests) == 2, timeout=30, what="two calls in flight")
        if target == "group":
            os.killpg(service.proc.pid, signal.SIGTERM)
        elif target == "group-twice":  # the same stop arriving twice, 0.3 s apart: still warm
            os.killpg(service.proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            os.killpg(service.proc.pid, signal.SIGTERM)
        else:
            service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(30) == 0
        final = stack.wait_all(ids, timeout=10)
        assert [(body["status"], body["attempts"]) for body in final.values()] == [("completed", 1)] * 2, final
        assert len(gemini.requests) == 2
    finally:
        stack.close()


def _local_job_in_the_pool(stack):
    """A worker service and a local stencil whose engine run has started in its CPU pool."""
    service = stack.workers(stencil=1, ia_gen=1)
    job_id = stack.api.submit(photo((768, 768)), engine="local").json()["jobId"]
    wait_until(lambda: stack.api.get(f"/status/{job_id}").json()["progress"] >= 10, timeout=30, interval=0.02,
               what="the engine run to start")
    return service, job_id


def test_a_stop_to_every_process_lets_a_local_engine_run_finish(tmp_path, gemini):
    """systemd's KillMode=control-group also SIGTERMs the CPU pool (`tasks/runtime/cpu.py`): the engine run in
    progress finishes and its job completes with one attempt."""
    stack = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    try:
        service, job_id = _local_job_in_the_pool(stack)
        os.killpg(service.proc.pid, signal.SIGTERM)
        assert service.proc.wait(60) == 0
        body = stack.wait_all([job_id], timeout=10)[job_id]
        assert body["status"] == "completed" and body["attempts"] == 1, body
    finally:
        stack.close()


def test_a_queue_process_killed_mid_job_is_replaced_and_its_job_runs_again(tmp_path, gemini):
    """The OOM killer takes the stencil queue's process while its job waits on the CPU pool: the
    supervisor forks a new one, the sweep queues the job again, and the new process gets the pool's
    answer (a `multiprocessing.Queue` reply channel stayed locked by the dead reader)."""
    stack = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    try:
        service, job_id = _local_job_in_the_pool(stack)
        os.kill(json.loads(stack.redis.hget(f"rq:job:{job_id}", "meta"))["pid"], signal.SIGKILL)
        body = stack.wait_all([job_id], timeout=60)[job_id]
        assert body["status"] == "completed" and body["attempts"] == 2, body
        assert service.proc.poll() is None
    finally:
        stack.close()
