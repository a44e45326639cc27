"""Races around admission, on the deployed server (gunicorn, gevent) with real workers: credits and the
in-flight set under concurrent large submissions, reads and cancels; Idempotency-Key duplicates racing
their original."""
from __future__ import annotations

import base64
import os
import struct
import threading
import uuid
import zlib

import pytest
import requests
from tests.conftest import ADMIN_TOKEN, drawing
from tests.servers import GunicornApi, wait_until

INITIAL = 3
RACER, DUPER = "racer-" + uuid.uuid4().hex[:8], "duper-" + uuid.uuid4().hex[:8]


def bulky_png(megabytes: float) -> bytes:
    """A small drawing as PNG carrying `megabytes` of random bytes in a private ancillary chunk: a large
    upload whose enqueue takes a while, for a job that costs nothing to run."""
    png = drawing((96, 96))
    data = os.urandom(int(megabytes * 1024 * 1024))
    chunk = struct.pack(">I", len(data)) + b"prVt" + data + struct.pack(">I", zlib.crc32(b"prVt" + data))
    return png[:-12] + chunk + png[-12:]  # before IEND


@pytest.fixture(scope="module")
def served(redis_url, tmp_path_factory):
    api = GunicornApi({"REDIS_URL": redis_url, "API_KEYS": f"tok-race:{RACER},tok-dup:{DUPER}",
                       "ADMIN_TOKEN": ADMIN_TOKEN, "SECRET_KEY": "k" * 32, "WEB_CONCURRENCY": 2,
                       "CREDITS_ENABLED": "true", "CREDITS_INITIAL": INITIAL, "MAX_INFLIGHT_PER_USER": 100,
                       "RATE_LIMIT": "100000/minute", "READ_RATE_LIMIT": "1000000/minute", "GEMINI_API_KEY": "",
                       "ACCESS_LOG": "",
                       "LOG_FORMAT": "text"}, str(tmp_path_factory.mktemp("race") / "api.log"))
    yield api.url
    api.stop()


def call(url, method, path, token, **kwargs):
    return requests.request(method, url + path, headers={"Authorization": f"Bearer {token}",
                                                          **kwargs.pop("headers", {})}, timeout=60, **kwargs)


def test_no_interleaving_of_submit_prune_cancel_and_settle_runs_a_job_uncharged(served, workers, redis):
    """Large submissions race `GET /credits` and `GET /jobs` (both settle ended jobs) and cancels: in the
    end the balance is exactly the initial one less the completed jobs, and nothing is left in flight."""
    body = {"operation": "color-match", "image": base64.b64encode(bulky_png(8)).decode()}
    accepted, stop = [], threading.Event()

    def submit():
        for _ in range(2):
            response = call(served, "POST", "/generate", "tok-race", json=body)
            assert response.status_code in (202, 403), response.text
            if response.status_code == 202:
                accepted.append(response.json()["jobId"])

    def read(path):
        while not stop.is_set():
            assert call(served, "GET", path, "tok-race").status_code == 200

    def cancel():
        while not stop.is_set():
            for job in call(served, "GET", "/jobs?status=waiting", "tok-race").json()["jobs"][:1]:
                call(served, "DELETE", f"/jobs/{job['jobId']}", "tok-race")

    submitters = [threading.Thread(target=submit) for _ in range(8)]
    others = [threading.Thread(target=read, args=(p,)) for p in ("/credits", "/credits", "/jobs?limit=5")]
    others.append(threading.Thread(target=cancel))
    for thread in submitters + others:
        thread.start()
    for thread in submitters:
        thread.join()
    stop.set()
    for thread in others:
        thread.join()

    def ended():
        words = [call(served, "GET", f"/status/{job_id}", "tok-race").json()["status"] for job_id in accepted]
        return words if all(w in ("completed", "failed", "canceled") for w in words) else None
    words = wait_until(ended, timeout=90, interval=0.2, what="every accepted job to end")
    completed = words.count("completed")
    assert completed and "failed" not in words, words
    balance = call(served, "GET", "/credits", "tok-race").json()["balance"]
    assert balance == INITIAL - completed, (balance, words)
    assert not redis.smembers(f"inkq:user:{RACER}:inflight")
    assert not any(redis.exists(f"inkq:charge:{job_id}") for job_id in accepted)


def test_an_idempotent_duplicate_never_names_a_job_that_does_not_exist(served, workers, redis):
    """Duplicates sent at once with one Idempotency-Key: while the original is refused (no credits),
    none of them gets a 200; while it is accepted with a large body, every 200 names a stored job."""
    def burst(key: str, image: bytes, n: int = 8) -> list:
        body = {"operation": "color-match", "image": base64.b64encode(image).decode()}
        barrier, seen = threading.Barrier(n), []

        def send():
            barrier.wait()
            response = call(served, "POST", "/generate", "tok-dup", json=body, headers={"Idempotency-Key": key})
            named = response.json().get("jobId")
            seen.append((response.status_code, response.json().get("code"),
                         bool(named and redis.exists(f"rq:job:{named}")), named))
        threads = [threading.Thread(target=send) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return seen

    small = bulky_png(0.01)
    assert call(served, "POST", f"/admin/credits/{DUPER}", ADMIN_TOKEN, json={"set": 0}).status_code == 200
    for _ in range(6):
        seen = burst(uuid.uuid4().hex, small)
        assert all(code == 403 and why == "insufficient_credits" for code, why, _, _ in seen), seen
    assert call(served, "POST", f"/admin/credits/{DUPER}", ADMIN_TOKEN, json={"set": 100}).status_code == 200
    for _ in range(2):
        seen = burst(uuid.uuid4().hex, bulky_png(6))
        assert sorted(code for code, *_ in seen) == [200] * 7 + [202], seen
        assert len({named for *_, named in seen}) == 1 and all(stored for _, _, stored, _ in seen), seen
    assert call(served, "GET", "/credits", "tok-dup").json()["balance"] == 98


def test_prune_leaves_an_admitted_job_alone_until_its_record_is_due(redis_url, redis):
    """The same race without timing: a prune between admission and enqueue keeps the charge; once the
    admission's grace has passed with no record (its request died), prune refunds it once."""
    from api import create_app
    from tasks.core import credits
    from tests.conftest import base_config

    user = "pruned-" + uuid.uuid4().hex[:8]
    app = create_app(base_config(redis_url, CREDITS_ENABLED="true", CREDITS_INITIAL=1))
    admission, job_id = app.extensions["inkq"].admission, uuid.uuid4().hex
    try:
        admission.admit(user, "color-match", job_id)
        assert admission.balance(user) == 0 and redis.sismember(credits.inflight_key(user), job_id)
        assert 0 < redis.ttl(credits.admitting_key(job_id)) <= credits.ADMIT_GRACE_S
        redis.delete(credits.admitting_key(job_id))  # the grace has passed and no record was written
        assert admission.balance(user) == 1 and not redis.sismember(credits.inflight_key(user), job_id)
        assert admission.balance(user) == 1
    finally:
        app.extensions["inkq"].hub.stop()
