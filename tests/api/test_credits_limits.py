"""Credits, limits and their interplay, through real HTTP, Redis and worker processes."""
from __future__ import annotations

import logging
import os
import signal
import time
import uuid

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from tests import fakegemini as fg
from tests.conftest import drawing
from tests.servers import wait_until


@pytest.fixture
def own(make_api, user):
    """An API with credits on, for a fresh user whose key is `tok-<user>`; its unfinished jobs are
    canceled afterwards so the next test finds the shared queues empty."""
    made = []

    def make(**extra):
        config = {"API_KEYS": f"tok-{user}:{user},tok-alice:alice", "CREDITS_ENABLED": "true",
                  "CREDITS_INITIAL": "5", "GEMINI_API_KEY": "test-key"}
        config.update(extra)
        api = make_api(**config)
        api.token = f"tok-{user}"
        api.user = user
        made.append(api)
        return api
    yield make
    for api in made:
        for job in api.get("/jobs?limit=100", token=api.token).json()["jobs"]:
            if job["status"] in ("waiting", "active"):
                api.delete(f"/jobs/{job['jobId']}", token=api.token)
                api.wait(job["jobId"], token=api.token)


def test_job_canceled_while_being_dequeued_does_no_work(own, workers, fake_gemini, redis):
    """The API's cancel can race a worker taking the job off the queue: the job then refuses to run."""
    from rq.job import Job

    api = own()
    fake_gemini.push(fg.slow(3))
    busy = api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "a"}).json()["jobId"]
    wait_until(lambda: api.get(f"/status/{busy}", token=api.token).json()["status"] == "active", timeout=60)
    racing = api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "b"}).json()["jobId"]
    job = Job.fetch(racing, connection=redis, serializer=JSONSerializer)
    job.meta["canceledAt"] = "2026-01-01T00:00:00.000Z"  # what the API's cancel writes first
    job.save_meta()
    status = api.wait(racing, token=api.token)
    assert status["status"] == "canceled" and status["attempts"] == 0, status
    assert len(fake_gemini.requests) == 1  # only the busy job reached the provider
    api.wait(busy, token=api.token)
    assert balance(api) == 5 - 2  # the busy job is charged; the refused one is refunded


def balance(api) -> int:
    return api.get("/credits", token=api.token).json()["balance"]


def stored_balance(redis, user) -> int:
    return int(redis.get(f"inkq:credits:{user}"))


def test_charge_once_on_success(own, workers):
    api = own()
    assert balance(api) == 5
    job_id = api.submit(drawing(), token=api.token, engine="local").json()["jobId"]
    assert balance(api) == 4
    assert api.wait(job_id, token=api.token)["status"] == "completed"
    assert balance(api) == 4
    ia = api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "rose"})
    assert ia.status_code == 202 and balance(api) == 2  # ia-gen costs 2
    assert api.wait(ia.json()["jobId"], token=api.token)["status"] == "completed"


def test_insufficient_credits_queues_nothing(own, redis):
    api = own(CREDITS_INITIAL="0")
    queue = Queue("stencil-generation", connection=redis, serializer=JSONSerializer)
    before = queue.count
    response = api.submit(drawing(), token=api.token)
    assert response.status_code == 403 and response.json()["code"] == "insufficient_credits"
    assert queue.count == before and api.get("/jobs", token=api.token).json()["jobs"] == []
    assert balance(api) == 0


def test_final_failure_is_refunded_by_the_worker(own, workers, fake_gemini, redis):
    api = own()
    fake_gemini.push(fg.blocked("SAFETY"))
    job_id = api.submit(drawing(), token=api.token).json()["jobId"]
    assert stored_balance(redis, api.user) == 4
    from rq.job import Job
    wait_until(lambda: Job.fetch(job_id, connection=redis, serializer=JSONSerializer).is_failed, timeout=30)
    # Refunded by the worker's failure callback, before anyone reads the status.
    wait_until(lambda: stored_balance(redis, api.user) == 5, timeout=5, what="refund")
    assert api.wait(job_id, token=api.token)["status"] == "failed"
    assert balance(api) == 5  # reading the status again does not refund twice


def test_retries_charge_once(own, workers, fake_gemini):
    api = own()
    fake_gemini.push(fg.error(503, retry_delay="1s"), fg.error(429, retry_delay="1s"), fg.ok())
    status = api.wait(api.submit(drawing(), token=api.token).json()["jobId"], token=api.token)
    assert status["status"] == "completed" and status["attempts"] == 3
    assert balance(api) == 4


def test_crash_rerun_charges_once(own, workers, fake_gemini, redis):
    api = own()
    fake_gemini.push(fg.slow(20), fg.ok())
    job_id = api.submit(drawing(), token=api.token).json()["jobId"]
    wait_until(lambda: len(fake_gemini.requests) == 1, timeout=60, what="the provider call")
    from rq.job import Job
    horse = Job.fetch(job_id, connection=redis, serializer=JSONSerializer).meta["pid"]
    os.kill(horse, signal.SIGKILL)  # the process running the job dies mid-call
    status = api.wait(job_id, token=api.token, timeout=60)
    assert status["status"] == "completed", status
    assert status["attempts"] == 2
    assert balance(api) == 4


def test_cancel_refunds_waiting_and_active(own, workers, fake_gemini):
    api = own()
    fake_gemini.push(fg.slow(20))
    active = api.submit(drawing(), token=api.token, operation="enhance").json()["jobId"]
    waiting = api.submit(drawing(), token=api.token, operation="enhance").json()["jobId"]
    assert balance(api) == 3
    wait_until(lambda: api.get(f"/status/{active}", token=api.token).json()["status"] == "active", timeout=60)
    assert api.delete(f"/jobs/{waiting}", token=api.token).status_code == 200
    started = time.monotonic()
    response = api.delete(f"/jobs/{active}", token=api.token)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 10
    assert api.get(f"/status/{active}", token=api.token).json()["status"] == "canceled"
    assert api.get(f"/status/{waiting}", token=api.token).json()["status"] == "canceled"
    assert balance(api) == 5
    assert api.delete(f"/jobs/{active}", token=api.token).status_code == 409
    assert balance(api) == 5


def test_duplicate_submission_charges_once(own, workers):
    api = own()
    image = drawing()
    for _ in range(3):
        response = api.post("/generate", token=api.token, headers={"Idempotency-Key": "same"},
                            json={"image": __import__("base64").b64encode(image).decode(), "engine": "local"})
        assert response.status_code in (200, 202)
    assert balance(api) == 4


def test_admin_changes_credits(own):
    api = own()
    assert api.post(f"/admin/credits/{api.user}", token="admin-secret-token", json={"add": 10}).json() == {"balance": 15}
    assert api.post(f"/admin/credits/{api.user}", token="admin-secret-token", json={"set": 2}).json() == {"balance": 2}
    assert balance(api) == 2
    for body in ({}, {"add": 1, "set": 1}, {"add": "x"}, {"more": 1}, [1]):
        response = api.post(f"/admin/credits/{api.user}", token="admin-secret-token", json=body)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", body
    assert api.post(f"/admin/credits/{api.user}", token=api.token, json={"add": 1}).status_code == 403
    assert api.post(f"/admin/credits/{api.user}", token=None, json={"add": 1}).status_code == 401


def test_reading_the_balance_with_credits_off_stores_nothing(make_api, redis):
    user = "u" + uuid.uuid4().hex[:10]
    off = make_api(API_KEYS=f"tok-{user}:{user}", CREDITS_ENABLED="false", CREDITS_INITIAL="0")
    assert off.get("/credits", token=f"tok-{user}").json() == {"balance": 0, "enabled": False}
    assert redis.exists(f"inkq:credits:{user}") == 0
    # Credits turned on later with a starting balance: the user who only looked gets it.
    on = make_api(API_KEYS=f"tok-{user}:{user}", CREDITS_ENABLED="true", CREDITS_INITIAL="5")
    assert on.get("/credits", token=f"tok-{user}").json() == {"balance": 5, "enabled": True}
    assert int(redis.get(f"inkq:credits:{user}")) == 5


def test_rate_limit(own):
    api = own(RATE_LIMIT="3/minute", CREDITS_ENABLED="false")
    codes = [api.submit(drawing(), token=api.token, engine="local").status_code for _ in range(4)]
    assert codes[:3] == [202, 202, 202]
    response = api.submit(drawing(), token=api.token)
    assert response.status_code == 429 and response.json()["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert api.submit(drawing(), token="tok-alice").status_code == 202  # other users are not limited


def test_too_many_jobs_in_flight(own, workers, fake_gemini):
    api = own(MAX_INFLIGHT_PER_USER="2")
    fake_gemini.push(fg.slow(8), fg.slow(8))
    first = api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "a"}).json()["jobId"]
    api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "b"})
    assert balance(api) == 1
    refused = api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "c"})
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_jobs"
    assert refused.headers["Retry-After"]
    assert balance(api) == 1  # never charged
    api.delete(f"/jobs/{first}", token=api.token)
    again = api.submit(drawing(), token=api.token, engine="local")
    assert again.status_code == 202


def test_queue_full_blocks_only_its_queue(own, workers, fake_gemini, caplog):
    api = own(QUEUE_MAX_DEPTH="1", MAX_INFLIGHT_PER_USER="50")
    fake_gemini.push(fg.slow(6), fg.slow(6))
    ids = [api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "x"}).json()["jobId"]]
    wait_until(lambda: api.get(f"/status/{ids[0]}", token=api.token).json()["status"] == "active", timeout=60)
    ids.append(api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "y"}).json()["jobId"])
    before = balance(api)
    logger = logging.getLogger("inkq.api")  # inkq's loggers do not propagate to the root
    logger.addHandler(caplog.handler)
    try:
        full = api.post("/generate", token=api.token, json={"operation": "ia-gen", "prompt": "z"})
    finally:
        logger.removeHandler(caplog.handler)
    assert full.status_code == 503 and full.json()["code"] == "queue_full" and full.headers["Retry-After"]
    assert any("queue full" in r.getMessage() for r in caplog.records)
    assert balance(api) == before
    other = api.submit(drawing(), token=api.token, engine="local")
    assert other.status_code == 202
    assert api.wait(other.json()["jobId"], token=api.token)["status"] == "completed"
    for job_id in ids:
        api.delete(f"/jobs/{job_id}", token=api.token)


def test_horse_killed_with_no_retries_left_is_refunded_at_once(own, workers, fake_gemini, redis):
    """rq runs no failure callback when a work-horse dies; the worker now does, so the refund and the
    final status need nobody to read anything. Every attempt's horse is killed; the job is watched in
    Redis only, because an API read would settle the refund itself."""
    from rq.job import Job

    api = own()
    fake_gemini.push(*[fg.slow(30)] * 6)
    job_id = api.submit(drawing(), token=api.token).json()["jobId"]
    killed: set[int] = set()

    def ended():
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
        if job.get_status() in ("failed", "finished"):
            return job
        in_call = job.meta.get("stage") == "sending to Gemini" and len(fake_gemini.requests) == len(killed) + 1
        if in_call and job.meta["pid"] not in killed:  # mid-call: its request has reached the provider
            killed.add(job.meta["pid"])
            os.kill(job.meta["pid"], signal.SIGKILL)
        return None
    job = wait_until(ended, timeout=90, interval=0.05, what="the job to fail")
    assert job.get_status() == "failed" and len(killed) == 4 and job.meta["attempts"] == 4, (killed, job.meta)
    wait_until(lambda: stored_balance(redis, api.user) == 5, timeout=10, what="the refund, with no reads")
    assert not redis.exists(f"inkq:blob:in:{job_id}")
    status = api.get(f"/status/{job_id}", token=api.token).json()
    assert status["status"] == "failed" and status["error"] == "The worker running the job stopped unexpectedly."
    assert status["attempts"] == 4 and balance(api) == 5
