"""Webhooks per Standard Webhooks v1, from the real workers to a local receiver, verified with the
`standardwebhooks` library itself; deliveries are retried (WEBHOOK_RETRY_S=1,... in the tests)."""
from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from tests import fakegemini as fg
from tests.conftest import WEBHOOK_SECRET, drawing, webhook_receiver
from tests.servers import wait_until


def verified(headers: dict, body: bytes) -> dict:
    """The event, after the Standard Webhooks library has checked its signature and timestamp."""
    return Webhook(WEBHOOK_SECRET).verify(body, headers)


def test_completed_and_failed_jobs_call_their_webhook(make_api, workers, receiver, fake_gemini):
    url, calls = receiver
    api = make_api(WEBHOOK_ALLOW_PRIVATE="true", GEMINI_API_KEY="test-key")
    job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    event = verified(headers, body)
    assert headers["webhook-id"] == f"{job_id}.completed"
    assert event["jobId"] == job_id and event["status"] == "completed" and event["progress"] == 100
    assert event["result"]["image"] == f"/result/{job_id}" and event["error"] is None
    with pytest.raises(Exception):
        Webhook(WEBHOOK_SECRET).verify(body.replace(b"completed", b"failed!!!"), headers)
    delivered = wait_until(lambda: (api.get(f"/status/{job_id}").json().get("webhook") or {}).get("state")
                           == "delivered", timeout=10)
    assert delivered
    status = api.get(f"/status/{job_id}").json()
    assert status["webhook"]["attempts"] == 1 and status["webhook"]["lastResponse"] == 204

    fake_gemini.push(fg.blocked("SAFETY"))
    failed = api.submit(drawing(), webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    event = verified(headers, body)
    assert event["jobId"] == failed and event["status"] == "failed" and "safety" in event["error"]
    assert headers["webhook-id"] == f"{failed}.failed"
    assert calls.empty()


def test_a_failing_receiver_is_retried_with_the_same_event_id(make_api, workers):
    """503, then a dropped answer (500), then 204: three attempts, one webhook-id, each signed anew."""
    with webhook_receiver(answers=[503, 500]) as (url, calls):
        api = make_api(WEBHOOK_ALLOW_PRIVATE="true")
        job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
        waiting = api.get(f"/status/{job_id}").json()
        assert waiting["webhook"]["state"] in ("waiting", "pending", "retrying", "delivered")
        attempts = [calls.get(timeout=30) for _ in range(3)]
        assert {h["webhook-id"] for h, _ in attempts} == {f"{job_id}.completed"}
        for headers, body in attempts:
            assert verified(headers, body)["jobId"] == job_id
        state = wait_until(lambda: (api.get(f"/status/{job_id}").json()["webhook"] or {}).get("state") == "delivered",
                           timeout=15)
        assert state
        hook = api.get(f"/status/{job_id}").json()["webhook"]
        assert hook["attempts"] == 3 and hook["lastResponse"] == 204
        assert calls.empty()


def test_a_client_error_is_final_and_shown(make_api, workers):
    with webhook_receiver(answers=[410]) as (url, calls):
        api = make_api(WEBHOOK_ALLOW_PRIVATE="true")
        job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
        calls.get(timeout=30)
        wait_until(lambda: api.get(f"/status/{job_id}").json()["webhook"]["state"] == "failed", timeout=15)
        hook = api.get(f"/status/{job_id}").json()["webhook"]
        assert hook["attempts"] == 1 and hook["lastResponse"] == 410
        assert api.get(f"/status/{job_id}").json()["status"] == "completed"  # a webhook never fails its job


def test_canceled_waiting_job_calls_its_webhook(make_api, workers, receiver, fake_gemini):
    url, calls = receiver
    api = make_api(WEBHOOK_ALLOW_PRIVATE="true", GEMINI_API_KEY="test-key")
    fake_gemini.push(fg.slow(5))
    busy = api.post("/generate", json={"operation": "ia-gen", "prompt": "x"}).json()["jobId"]
    waiting = api.post("/generate", json={"operation": "ia-gen", "prompt": "y", "webhookUrl": url}).json()["jobId"]
    assert api.delete(f"/jobs/{waiting}").status_code == 200
    headers, body = calls.get(timeout=15)
    event = verified(headers, body)
    assert event["jobId"] == waiting and event["status"] == "canceled"
    api.delete(f"/jobs/{busy}")
    api.wait(busy)


def test_no_webhook_no_field(api, workers):
    job_id = api.submit(drawing(), engine="local").json()["jobId"]
    assert "webhook" not in api.wait(job_id)


@pytest.mark.parametrize("hook", ["http://127.0.0.1:9/x", "http://10.0.0.1/x", "http://[::1]/x",
                                  "ftp://example.org/x", "http://user:pw@127.0.0.1/x", "not a url",
                                  "http://169.254.169.254/latest/meta-data"])
def test_private_or_odd_webhook_urls_are_refused(api, hook):
    response = api.submit(drawing(), webhookUrl=hook)
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
