"""Webhooks: signed POSTs of a job's final status from the real workers to a local receiver."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from tests import fakegemini as fg
from tests.conftest import drawing


def check_signature(headers: dict, body: bytes) -> None:
    t, v1 = (part.split("=", 1)[1] for part in headers["X-Inkq-Signature"].split(","))
    expected = hmac.new(b"hook-secret", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, expected)


def test_completed_and_failed_jobs_call_their_webhook(make_api, workers, receiver, fake_gemini):
    url, calls = receiver
    api = make_api(WEBHOOK_ALLOW_PRIVATE="true", GEMINI_API_KEY="test-key")
    job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    check_signature(headers, body)
    event = json.loads(body)
    assert event["jobId"] == job_id and event["status"] == "completed" and event["resultUrl"] == f"/result/{job_id}"

    fake_gemini.push(fg.blocked("SAFETY"))
    failed = api.submit(drawing(), webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    event = json.loads(body)
    assert event["jobId"] == failed and event["status"] == "failed" and "safety" in event["error"]
    assert calls.empty()


def test_canceled_waiting_job_calls_its_webhook(make_api, workers, receiver, fake_gemini):
    url, calls = receiver
    api = make_api(WEBHOOK_ALLOW_PRIVATE="true", GEMINI_API_KEY="test-key")
    fake_gemini.push(fg.slow(5))
    busy = api.post("/generate", json={"operation": "ia-gen", "prompt": "x"}).json()["jobId"]
    waiting = api.post("/generate", json={"operation": "ia-gen", "prompt": "y", "webhookUrl": url}).json()["jobId"]
    assert api.delete(f"/jobs/{waiting}").status_code == 200
    _, body = calls.get(timeout=15)
    assert json.loads(body)["jobId"] == waiting and json.loads(body)["status"] == "canceled"
    api.delete(f"/jobs/{busy}")
    api.wait(busy)


@pytest.mark.parametrize("hook", ["http://127.0.0.1:9/x", "http://10.0.0.1/x", "http://[::1]/x",
                                  "ftp://example.org/x", "http://user:pw@127.0.0.1/x", "not a url",
                                  "http://169.254.169.254/latest/meta-data"])
def test_private_or_odd_webhook_urls_are_refused(api, hook):
    response = api.submit(drawing(), webhookUrl=hook)
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
