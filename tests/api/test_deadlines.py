"""The start deadline, `maxWaitS` on `POST /generate` (`tasks/core/deadlines.py`), with real processes: one
worker service whose only stencil slot a slow provider call holds, so the deadline jobs wait."""
from __future__ import annotations

import json
import time

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from tests import fakegemini as fg
from tests.conftest import WEBHOOK_SECRET, drawing, photo, webhook_receiver
from tests.servers import Stack, wait_until

MESSAGE = "Not started within maxWaitS={} seconds of its submission."


@pytest.fixture(scope="module")
def gemini():
    with fg.FakeGemini() as fake:
        yield fake


@pytest.fixture(scope="module")
def stack(tmp_path_factory, gemini):
    made = Stack(tmp_path_factory.mktemp("deadlines"), gemini.url, CREDITS_ENABLED="true", CREDITS_INITIAL=100,
                 MAX_INFLIGHT_PER_USER=100)
    made.workers(stencil=1)
    yield made
    made.close()


@pytest.fixture
def fresh(stack, gemini):
    """The provider answers at once unless told otherwise; the stencil slot is free."""
    gemini.reset()
    yield stack
    gemini.reset()


def balance(stack) -> int:
    return stack.api.get("/credits").json()["balance"]


def busy(stack, gemini, seconds: float) -> str:
    """Hold the one stencil slot with a provider call of `seconds`; the job's id once it is active."""
    gemini.push(fg.slow(seconds))
    job_id = stack.api.submit(photo((96, 96)), engine="gemini").json()["jobId"]
    wait_until(lambda: stack.api.get(f"/status/{job_id}").json()["status"] == "active", timeout=60,
               what="the slow job to start")
    return job_id


def stored(stack, job_id: str) -> dict:
    """The job as Redis holds it (no API read, which could itself end it)."""
    fields = stack.redis.hgetall(f"rq:job:{job_id}")
    return {"status": fields[b"status"].decode(), "meta": json.loads(fields[b"meta"])}


def test_a_job_not_started_by_its_deadline_is_canceled_refunded_and_never_run(fresh, gemini):
    """Every worker slot is busy: the poller sees `canceled` at the deadline, with the reason; the webhook
    says canceled; the credit comes back; the provider never sees it. A job nobody reads is ended by the
    worker services' supervisor at its deadline just the same."""
    stack = fresh
    start_balance = balance(stack)
    slow = busy(stack, gemini, 6)
    with webhook_receiver() as (url, calls):
        submitted = time.monotonic()
        polled = stack.api.submit(drawing(), engine="gemini", maxWaitS=2, webhookUrl=url)
        assert polled.status_code == 202, polled.text
        polled = polled.json()["jobId"]
        unread = stack.api.submit(drawing(), engine="gemini", maxWaitS=1).json()["jobId"]
        assert balance(stack) == start_balance - 3  # all three charged at submission

        seen = []

        def ended():
            body = stack.api.get(f"/status/{polled}").json()
            seen.append((time.monotonic() - submitted, body["status"]))
            return body if body["status"] != "waiting" else None
        body = wait_until(ended, timeout=30, interval=0.1, what="the deadline job to end")
        waited = time.monotonic() - submitted
        assert body["status"] == "canceled", body
        assert body["error"] == MESSAGE.format(2) and body["attempts"] == 0 and body["startedAt"] is None
        assert body["endedAt"] and body["progress"] == 0
        assert 1.9 <= waited < 4.5, seen  # at its deadline, not when the slot frees (6 s)
        assert stack.api.get(f"/status/{slow}").json()["status"] == "active"  # the slot was busy all along

        unread_job = stored(stack, unread)  # ended by the supervisor: no API read of it was made
        assert unread_job["status"] == "canceled" and unread_job["meta"]["expired"], unread_job

        headers, raw = calls.get(timeout=30)
    from standardwebhooks.webhooks import Webhook

    event = Webhook(WEBHOOK_SECRET).verify(raw, headers)
    assert event["jobId"] == polled and event["status"] == "canceled" and event["error"] == MESSAGE.format(2)
    assert headers["webhook-id"] == f"{polled}.canceled"
    assert balance(stack) == start_balance - 1  # both deadline jobs refunded; the slow one is charged

    assert stack.api.wait(slow)["status"] == "completed"
    time.sleep(1.5)  # a free slot: neither deadline job is ever taken to run
    for job_id in (polled, unread):
        body = stack.api.get(f"/status/{job_id}").json()
        assert body["status"] == "canceled" and body["attempts"] == 0, body
    assert len(gemini.requests) == 1  # only the slow job reached the provider
    assert stack.redis.zcard("inkq:deadlines") == 0
    assert not stack.redis.lrange("rq:queue:stencil-generation", 0, -1)
    assert int(stack.redis.hget("inkq:metrics", "c|stencil-generation|expired")) >= 2
    assert balance(stack) == start_balance - 1


def test_a_worker_taking_a_job_past_its_deadline_ends_it_instead_of_running_it(fresh, gemini):
    """No supervisor pass or reader ends it (its entry is gone from the deadlines set): the worker that takes
    it, once the slot frees after its deadline, ends it as canceled and never calls the provider for it."""
    stack = fresh
    start_balance = balance(stack)
    slow = busy(stack, gemini, 3)
    late = stack.api.submit(drawing(), engine="gemini", maxWaitS=1).json()["jobId"]
    assert stack.redis.zrem("inkq:deadlines", late) == 1  # before its deadline: only the taking worker sees it
    wait_until(lambda: stored(stack, slow)["status"] == "finished", timeout=30, what="the slow job to end")
    wait_until(lambda: stored(stack, late)["status"] != "queued", timeout=30, what="the late job to be taken")
    job = stored(stack, late)
    assert job["status"] == "canceled" and job["meta"]["error"] == MESSAGE.format(1) and job["meta"]["attempts"] == 0
    assert not stack.redis.lrange("rq:queue:stencil-generation", 0, -1)
    assert not any(stack.redis.lrange(key, 0, -1) for key in stack.redis.scan_iter("inkq:claims:*"))
    assert len(gemini.requests) == 1
    assert balance(stack) == start_balance - 1


def test_a_deadline_job_that_starts_in_time_runs_normally(fresh, gemini):
    stack = fresh
    start_balance = balance(stack)
    job_id = stack.api.submit(drawing(), engine="gemini", maxWaitS=30).json()["jobId"]
    body = stack.api.wait(job_id)
    assert body["status"] == "completed" and body["attempts"] == 1 and body["error"] is None, body
    assert stack.redis.zcard("inkq:deadlines") == 0  # its entry left with its end
    assert balance(stack) == start_balance - 1


PARKED = "inkq-test-parked"  # a queue no worker serves


def parked_job(redis, user: str, max_wait_s: int, due: bool):
    """A job of `user` with a deadline (already passed when `due`), waiting in a queue no worker takes and not
    in the deadlines set (no supervisor pass ends it): only the parties a test lets act can end it."""
    import uuid

    from rq import Queue

    from tasks.core import deadlines

    meta = {"user": user, "operation": "stencil", "progress": 0, "attempts": 0,
            **deadlines.meta_of(max_wait_s, now=time.time() - (max_wait_s + 1 if due else 0))}
    return Queue(PARKED, connection=redis, serializer=JSONSerializer).enqueue(
        "tasks.jobs.stencil", {}, job_id=uuid.uuid4().hex, meta=meta)


def test_the_deadline_fences_keep_a_taken_job_to_its_worker(redis):
    """While its id is in a worker's claims only that worker may end it; while it is in its queue, only a
    supervisor or the API; and only once it is due."""
    from tasks import ending

    claims = "inkq:claims:test-worker-that-does-not-run"
    early = parked_job(redis, "alice", 60, due=False)
    assert not ending.expire(redis, early) and not ending.expire(redis, early, claims_key=claims)  # not due
    job = parked_job(redis, "alice", 1, due=True)
    assert redis.lrem(f"rq:queue:{PARKED}", 0, job.id) == 1 and redis.rpush(claims, job.id)  # taken
    assert not ending.expire(redis, job)  # due, but taken: neither a supervisor's nor the API's
    assert ending.expire(redis, job, claims_key=claims)
    assert not ending.expire(redis, job, claims_key=claims)  # once
    assert redis.llen(claims) == 0 and redis.hget(job.key, "status") == b"canceled"
    assert ending.expire(redis, Job.fetch(job.id, connection=redis, serializer=JSONSerializer)) is False
    assert redis.hget(early.key, "status") == b"queued"
    redis.delete(f"rq:queue:{PARKED}")


def test_only_the_owners_read_ends_a_due_job(api, redis):
    """Another user's reads of a due job answer 404 (or leave it out of their list) and change nothing; the
    owner's read ends it."""
    job = parked_job(redis, "alice", 1, due=True)
    for path in (f"/status/{job.id}", f"/status/{job.id}/events", "/jobs", f"/result/{job.id}"):
        response = api.get(path, token="tok-bob")
        assert response.status_code in (200, 404) and job.id not in response.text, path
    assert redis.hget(job.key, "status") == b"queued"
    assert api.delete(f"/jobs/{job.id}", token="tok-bob").status_code == 404
    body = api.get(f"/status/{job.id}").json()
    assert body["status"] == "canceled" and body["error"] == MESSAGE.format(1), body
    redis.delete(f"rq:queue:{PARKED}")


@pytest.mark.parametrize("value", [0, -1, 86401, 10**12, 2.5, 2.0, "10", True, [5], {"s": 5}])
def test_bad_max_wait_values_are_refused_in_json(api, value):
    response = api.submit(drawing(), engine="local", maxWaitS=value)
    assert response.status_code == 400, (value, response.text)
    assert response.json() == {"error": "`maxWaitS` must be a whole number of seconds from 1 to 86400.",
                               "code": "invalid_request"}


@pytest.mark.parametrize("value", ["0", "86401", "1.5", "ten", "", " ", "-3", "１２"])
def test_bad_max_wait_values_are_refused_in_multipart(api, value):
    response = api.post("/generate", files={"image": ("d.png", drawing(), "image/png")},
                        data={"engine": "local", "maxWaitS": value})
    assert response.status_code == 400, (value, response.text)
    assert "maxWaitS" in response.json()["error"]


def test_max_wait_in_multipart_sets_the_deadline(api, redis):
    before = time.time()
    response = api.post("/generate", files={"image": ("d.png", drawing(), "image/png")},
                        data={"engine": "local", "maxWaitS": "86400"})
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    meta = Job.fetch(job_id, connection=redis, serializer=JSONSerializer).meta
    assert meta["maxWaitS"] == 86400 and before + 86400 <= meta["deadline"] <= time.time() + 86400
    api.delete(f"/jobs/{job_id}")
    api.wait(job_id)
    assert redis.zscore("inkq:deadlines", job_id) is None  # any end removes the entry


def test_an_event_stream_sends_canceled_at_the_deadline(api, redis):
    """The stream of a waiting job with a deadline reads it again at its deadline (not only every
    EVENTS_POLL_S, 10 s): no supervisor pass and no worker is there to end it and announce it."""
    job = parked_job(redis, "alice", 1, due=False)
    opened = time.monotonic()
    response = api.get(f"/status/{job.id}/events", stream=True)
    events = [json.loads(line[6:]) for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    took = time.monotonic() - opened
    assert [e["status"] for e in events] == ["waiting", "canceled"], events
    assert events[-1]["error"] == MESSAGE.format(1)
    assert took < 5, took
    redis.delete(f"rq:queue:{PARKED}")


def test_the_owners_job_list_ends_a_due_job(api, redis):
    job = parked_job(redis, "alice", 1, due=True)
    redis.zadd("inkq:user:alice:jobs", {job.id: time.time()})  # listed, as a submission lists it
    assert job.id not in api.get("/jobs?status=waiting").text  # read, ended, and so no longer waiting
    listed = {body["jobId"]: body for body in api.get("/jobs?limit=100").json()["jobs"]}
    assert listed[job.id]["status"] == "canceled" and listed[job.id]["error"] == MESSAGE.format(1)
    redis.delete(f"rq:queue:{PARKED}")
