"""Erasure end to end, on the real services: `scripts/start_api.sh` (gunicorn) and `scripts/start_workers.sh` on a
Redis of their own, both at LOG_LEVEL=DEBUG, Gemini the fake server.

- the owner erases a job (completed, waiting, running): 204, then every job endpoint answers 404 as for an
  unknown id, its signed links stop working, and no Redis key names the job or holds its id in any value
  (`tests.servers.traces` scans every key, whatever its type); another user's request erases nothing;
  a running job is stopped first, refunded, and nothing its worker writes later brings it back;
- an admin erases a user: every job, upload, idempotency key, lease, counter and the balance; nothing of
  the user is left in Redis but rate-limit counters that expire within 10 minutes; other users' jobs are
  untouched; a non-admin gets 403 and erases nothing;
- `retentionS` is 60 up to `RESULT_TTL_S`, else 400;
- no log line of either service, at DEBUG, holds a marker put into prompts and into images' metadata.

The S3 store's erasure (objects, presigned URLs, the bucket listed) is in tests/api/test_blob_store.py, and so
are the jobs kept for `retentionS=60`, in each store, whose minute passes while that module's other tests run.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
import uuid

import pytest
import redis as redis_lib
import requests
from PIL import Image, PngImagePlugin

from tests import fakegemini as fg
from tests.conftest import ADMIN_TOKEN, photo, webhook_receiver
from tests.servers import GunicornApi, RedisServer, Workers, erasure_leftovers, live_workers_expected, wait_until

MARKER = "inkqmark" + uuid.uuid4().hex[:12]  # in prompts and in images' metadata: never in a log line
RUN = uuid.uuid4().hex[:6]
ALICE, BOB, CAROL = f"alice.{RUN}", f"bob.{RUN}", f"carol.{RUN}"  # carol is erased by the admin
TOKENS = {ALICE: "tok-alice", BOB: "tok-bob", CAROL: "tok-carol"}
ENDED = ("completed", "failed", "canceled")
RESULT_TTL_S = 3600


def marked_png(size=(96, 96)) -> bytes:
    """A PNG drawing whose tEXt metadata carries the marker."""
    img = Image.open(io.BytesIO(photo(size))).convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"tattoo of {MARKER}")
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


class Client:
    """The API over HTTP as one user."""

    def __init__(self, url: str, token: str | None):
        self.url, self.http = url, requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kw) -> requests.Response:
        return self.http.request(method, self.url + path, timeout=30, **kw)

    def submit(self, image: bytes | None = None, **fields) -> str:
        if image is not None:
            fields["image"] = base64.b64encode(image).decode()
        response = self.call("POST", "/generate", json=fields)
        assert response.status_code == 202, response.text
        return response.json()["jobId"]

    def status(self, job_id: str) -> dict:
        return self.call("GET", f"/status/{job_id}").json()

    def wait(self, job_id: str, statuses=ENDED, timeout: float = 90) -> dict:
        def reached():
            body = self.status(job_id)
            return body if body.get("status") in statuses else None
        return wait_until(reached, timeout=timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("erasure")
    server = RedisServer()
    gemini = fg.FakeGemini().start()
    env = {"REDIS_URL": server.url, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG", "GEMINI_API_KEY": "erasure-key",
           "GEMINI_BASE_URL": gemini.url, "GEMINI_TIMEOUT_S": "20", "CONCURRENCY_STENCIL": "2",
           "CONCURRENCY_ENHANCE": "1", "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1",
           "CONCURRENCY_WEBHOOKS": "1", "WEBHOOK_SECRET": "whsec_aG9vay1zZWNyZXQtZm9yLXRlc3Rz",
           "WEBHOOK_RETRY_S": "1,1", "WEBHOOK_ALLOW_PRIVATE": "true", "SECRET_KEY": "e" * 32,
           "RESULT_TTL_S": str(RESULT_TTL_S)}
    workers = Workers(env, str(tmp / "workers.log"))
    api = GunicornApi({**env, "API_KEYS": ",".join(f"{token}:{user}" for user, token in TOKENS.items()),
                       "ADMIN_TOKEN": ADMIN_TOKEN, "WEB_CONCURRENCY": "1", "CREDITS_ENABLED": "true",
                       "CREDITS_INITIAL": "100", "RATE_LIMIT": "10000/minute", "READ_RATE_LIMIT": "100000/minute",
                       "ACCESS_LOG": "-"}, str(tmp / "api.log"))
    redis = redis_lib.Redis.from_url(server.url)
    try:
        workers.wait_ready(redis, live_workers_expected(env))
        yield {"api": api, "workers": workers, "gemini": gemini, "redis": redis, "tmp": tmp,
               "users": {user: Client(api.url, token) for user, token in TOKENS.items()},
               "admin": Client(api.url, ADMIN_TOKEN), "anonymous": Client(api.url, None)}
    finally:
        api.stop()
        workers.stop()
        gemini.stop()
        server.stop()


def gone_everywhere(svc, user: str, job_id: str) -> None:
    """Every job endpoint answers for the job exactly as for an unknown id, and the listing omits it."""
    client, unknown = svc["users"][user], uuid.uuid4().hex
    for method, path in (("GET", "/status/{}"), ("GET", "/status/{}/events"), ("GET", "/result/{}"),
                         ("DELETE", "/jobs/{}"), ("DELETE", "/jobs/{}/data")):
        answer, expected = client.call(method, path.format(job_id)), client.call(method, path.format(unknown))
        assert answer.status_code == expected.status_code == 404, (method, path, answer.text)
        assert answer.json() == expected.json(), (method, path)
    assert job_id not in {job["jobId"] for job in client.call("GET", "/jobs?limit=100").json()["jobs"]}


def test_owner_erases_a_completed_job_and_every_trace_of_it(svc):
    alice, bob, redis = svc["users"][ALICE], svc["users"][BOB], svc["redis"]
    with webhook_receiver() as (hook, calls):
        erased = alice.call("POST", "/generate", headers={"Idempotency-Key": f"erase-{RUN}"}, json={
            "image": base64.b64encode(photo((96, 96))).decode(), "engine": "local", "format": "svg",
            "webhookUrl": hook}).json()["jobId"]
        kept = alice.submit(photo((96, 96)), engine="local")
        theirs = bob.submit(photo((96, 96)), engine="local")
        done = alice.wait(erased)
        assert done["status"] == "completed", done
        calls.get(timeout=30)
        wait_until(lambda: alice.status(erased)["webhook"]["state"] == "delivered", timeout=30)
    links = [done["result"]["image"], done["result"]["svg"]]
    assert all(requests.get(link, timeout=10).status_code == 200 for link in links)
    assert alice.call("GET", f"/result/{erased}").status_code == 200

    # another user's request is an unknown id's, and erases nothing
    refused, unknown = bob.call("DELETE", f"/jobs/{erased}/data"), bob.call("DELETE", f"/jobs/{uuid.uuid4().hex}/data")
    assert refused.status_code == unknown.status_code == 404 and refused.json() == unknown.json()
    assert alice.status(erased)["status"] == "completed" and requests.get(links[0], timeout=10).status_code == 200

    answer = alice.call("DELETE", f"/jobs/{erased}/data")
    assert answer.status_code == 204 and answer.content == b"", answer.text
    gone_everywhere(svc, ALICE, erased)
    for link in links:  # the signed links check that the job exists
        assert requests.get(link, timeout=10).status_code == 404
    assert erasure_leftovers(redis, [erased]) == []
    # the same Idempotency-Key now makes a new job: its record went with the erased one
    again = alice.call("POST", "/generate", headers={"Idempotency-Key": f"erase-{RUN}"}, json={
        "image": base64.b64encode(photo((96, 96))).decode(), "engine": "local", "format": "svg"})
    assert again.status_code == 202 and again.json()["jobId"] != erased

    # the owner's other job and another user's are untouched
    for client, job_id in ((alice, kept), (bob, theirs)):
        body = client.wait(job_id)
        assert body["status"] == "completed" and requests.get(body["result"]["image"], timeout=10).status_code == 200


def test_erasing_a_running_job_stops_it_refunds_it_and_nothing_brings_it_back(svc):
    alice, redis, gemini = svc["users"][ALICE], svc["redis"], svc["gemini"]
    before = alice.call("GET", "/credits").json()["balance"]
    calls = len(gemini.requests)
    gemini.push(fg.slow(2.5, fg.ok()))  # the running job's provider call answers after its erasure
    running = alice.submit(operation="ia-gen", prompt="a swallow")
    waiting = alice.submit(operation="ia-gen", prompt="a rose")  # behind it: one ia-gen slot
    alice.wait(running, statuses=("active",), timeout=30)
    wait_until(lambda: len(gemini.requests) > calls, timeout=30, what="the running job's provider call")
    assert alice.status(waiting)["status"] == "waiting"
    assert alice.call("GET", "/credits").json()["balance"] == before - 4
    ended = threading.Event()

    def follow():  # an event stream open on the waiting job ends when it is erased
        with requests.get(f"{alice.url}/status/{waiting}/events", headers={"Authorization": "Bearer tok-alice"},
                          stream=True, timeout=30) as stream:
            for _ in stream.iter_lines():
                pass
        ended.set()
    threading.Thread(target=follow, daemon=True).start()
    time.sleep(0.5)

    started = time.monotonic()
    for job_id in (waiting, running):  # the waiting one first: else it would take the slot the other frees
        assert alice.call("DELETE", f"/jobs/{job_id}/data").status_code == 204
    assert time.monotonic() - started < 15
    assert ended.wait(15), "the event stream on the erased job did not end"
    for job_id in (running, waiting):
        gone_everywhere(svc, ALICE, job_id)
    assert alice.call("GET", "/credits").json()["balance"] == before  # both refunded, as canceled
    assert erasure_leftovers(redis, [running, waiting]) == []

    # the stopped call answers now; its worker's late writes (progress, output, heartbeat, end) are refused
    time.sleep(3)
    assert erasure_leftovers(redis, [running, waiting]) == []
    assert alice.status(running) == alice.status(uuid.uuid4().hex)
    assert len(gemini.requests) == calls + 1  # the waiting job never ran
    freed = alice.submit(operation="ia-gen", prompt="a lily")  # the slot is free again
    assert alice.wait(freed)["status"] == "completed"


def test_a_job_whose_worker_is_frozen_is_erased_and_the_worker_brings_nothing_back(svc):
    """The worker service is stopped (SIGSTOP) while it runs the job: the erasure waits for it in vain, ends the
    job itself (refunded) and erases it. Resumed, the worker hears the stop, heartbeats, gets its provider's
    answer, stores its output and tries to end the job: every write is refused or deleted, nothing names the job."""
    alice, redis, gemini, workers = svc["users"][ALICE], svc["redis"], svc["gemini"], svc["workers"]
    before = alice.call("GET", "/credits").json()["balance"]
    calls = len(gemini.requests)
    gemini.push(fg.slow(3, fg.ok()))
    job_id = alice.submit(operation="ia-gen", prompt="a frozen design")
    alice.wait(job_id, statuses=("active",), timeout=30)
    wait_until(lambda: len(gemini.requests) > calls, timeout=30, what="the provider call")
    os.killpg(workers.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert alice.call("DELETE", f"/jobs/{job_id}/data").status_code == 204
        assert time.monotonic() - started >= 4  # it waited for the worker to stop the job
        gone_everywhere(svc, ALICE, job_id)
        assert erasure_leftovers(redis, [job_id]) == []
        assert alice.call("GET", "/credits").json()["balance"] == before
    finally:
        os.killpg(workers.proc.pid, signal.SIGCONT)
    time.sleep(7)  # beats (every 5 s), the answer, the output, the refused end
    assert erasure_leftovers(redis, [job_id]) == []
    assert alice.status(job_id) == alice.status(uuid.uuid4().hex)
    again = alice.submit(operation="ia-gen", prompt="after the thaw")  # the worker serves again
    assert alice.wait(again)["status"] == "completed"


def test_admin_erases_a_user_and_only_that_user(svc):
    carol, bob, admin, anonymous = svc["users"][CAROL], svc["users"][BOB], svc["admin"], svc["anonymous"]
    redis, gemini = svc["redis"], svc["gemini"]
    jobs = [carol.submit(photo((96, 96)), engine="local", format="svg")]
    jobs.append(carol.call("POST", "/generate", headers={"Idempotency-Key": "carol-key"}, json={
        "operation": "color-match", "image": base64.b64encode(photo((96, 96))).decode()}).json()["jobId"])
    gemini.push(fg.blocked())
    jobs.append(carol.submit(operation="ia-gen", prompt="a failing design"))
    for job_id in jobs:
        carol.wait(job_id)
    assert carol.status(jobs[2])["status"] == "failed"
    gemini.push(fg.slow(2.5, fg.ok()))
    jobs.append(carol.submit(operation="ia-gen", prompt="a running design"))
    carol.wait(jobs[-1], statuses=("active",), timeout=30)
    jobs.append(carol.submit(operation="ia-gen", prompt="a waiting design"))
    assert admin.call("POST", f"/admin/credits/{CAROL}", json={"add": 5}).status_code == 200
    theirs = bob.submit(photo((96, 96)), engine="local")
    kept = bob.wait(theirs)
    assert kept["status"] == "completed"
    assert any(CAROL in key for key, _ in erasure_leftovers(redis, [CAROL]))

    # no credentials 401; a user (carol herself, another) 403; an admin from another site 403: nothing erased
    path = f"/admin/users/{CAROL}/data"
    assert anonymous.call("DELETE", path).status_code == 401
    for client in (carol, bob):
        refused = client.call("DELETE", path)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    cross = admin.call("DELETE", path, headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert admin.call("DELETE", "/admin/users/bad%20id/data").status_code == 400
    for job_id in jobs:
        assert carol.call("GET", f"/status/{job_id}").status_code == 200

    answer = admin.call("DELETE", path)
    assert answer.status_code == 200, answer.text
    assert answer.json()["jobs"] == len(jobs) and answer.json()["objects"] >= 3  # two stencil files, a preview
    for job_id in jobs:
        gone_everywhere(svc, CAROL, job_id)
    assert carol.call("GET", "/jobs").json() == {"jobs": []}
    assert carol.call("GET", "/credits").json()["balance"] == 100  # a new user's
    left = erasure_leftovers(redis, [CAROL, *jobs])
    assert [key for key, _ in left if not key.startswith("inkq:credits:")] == [], left  # the read just above
    time.sleep(3)  # the stopped job's provider call answers: its worker's late writes bring nothing back
    assert [key for key, _ in erasure_leftovers(redis, [*jobs])] == []

    # another user's jobs and results are untouched; the erasure is one log line, naming who and how many jobs
    now = bob.status(theirs)
    assert {**now, "result": None} == {**kept, "result": None}  # the result's link is signed anew at each read
    assert {k: v for k, v in now["result"].items() if k != "image"} == {
        k: v for k, v in kept["result"].items() if k != "image"}
    assert requests.get(kept["result"]["image"], timeout=10).status_code == 200
    lines = [json.loads(line) for line in open(svc["api"].log.name, encoding="utf-8") if "erased the data" in line]
    assert len(lines) == 1 and f"user {CAROL} at an admin's request: {len(jobs)} jobs" in lines[0]["message"], lines
    assert lines[0]["userId"] == "@admin"


def test_retention_is_60_up_to_result_ttl(svc):
    alice = svc["users"][ALICE]
    for value in (59, RESULT_TTL_S + 1, "soon", -60, 0):
        refused = alice.call("POST", "/generate", json={"image": base64.b64encode(photo((96, 96))).decode(),
                                                        "retentionS": value})
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_request", (value, refused.text)
    accepted = alice.call("POST", "/generate", data={"retentionS": str(RESULT_TTL_S), "engine": "local"},
                          files={"image": ("p.jpg", photo((96, 96)), "image/jpeg")})
    assert accepted.status_code == 202, accepted.text


def test_no_prompt_and_no_image_byte_reaches_a_log_line(svc):
    """Jobs with the marker in their prompt and in their images' PNG metadata (sent inline, as multipart, to the
    local engine and to the provider, which answers with a marked image), failures and refusals included,
    with both services at DEBUG; then every line of both logs is searched for the marker, its base64 forms
    and a PNG's base64 header."""
    alice, gemini = svc["users"][ALICE], svc["gemini"]
    image = marked_png()
    gemini.push(fg.ok(marked_png((64, 64))), fg.ok(marked_png((64, 64))), fg.blocked(), fg.error(400))
    jobs = [alice.submit(operation="ia-gen", prompt=f"a swallow {MARKER}"),
            alice.submit(image, engine="gemini", prompt=f"bold lines {MARKER}"),
            alice.submit(operation="ia-gen", prompt=f"refused {MARKER}"),
            alice.submit(image, operation="enhance", engine="gemini", prompt=f"bad {MARKER}"),
            alice.submit(image, engine="local", format="svg"),
            alice.submit(image, operation="color-match")]
    multipart = alice.call("POST", "/generate", data={"engine": "local", "prompt": f"multipart {MARKER}"},
                           files={"image": ("m.png", image, "image/png")})
    assert multipart.status_code == 202
    jobs.append(multipart.json()["jobId"])
    too_long = alice.call("POST", "/generate", json={"operation": "ia-gen", "prompt": MARKER * 300})
    assert too_long.status_code == 400
    not_an_image = alice.call("POST", "/generate", json={"image": base64.b64encode(MARKER.encode() * 20).decode()})
    assert not_an_image.status_code in (400, 415)
    outcomes = sorted(alice.wait(job_id)["status"] for job_id in jobs)
    assert outcomes == ["completed"] * 5 + ["failed"] * 2, outcomes
    for job_id in jobs:  # through an erasure too
        assert alice.call("DELETE", f"/jobs/{job_id}/data").status_code == 204
    time.sleep(1)

    raw = image
    at = raw.index(MARKER.encode())
    first, last = (at // 3 + 1) * 3, ((at + len(MARKER)) // 3) * 3  # the marker's bytes as whole base64 groups
    encoded = base64.b64encode(raw)[first // 3 * 4:last // 3 * 4].decode()
    needles = [MARKER, encoded, encoded.replace("+", "-").replace("/", "_"), "iVBORw0KGgo", "\\x89PNG"]
    for name in ("api.log", "workers.log"):
        text = (svc["tmp"] / name).read_text(encoding="utf-8", errors="replace")
        assert '"level": "debug"' in text, f"{name} has no DEBUG line: LOG_LEVEL=DEBUG was not in force"
        for needle in needles:
            hits = [line[:300] for line in text.splitlines() if needle in line]
            assert not hits, f"{name} logs {needle!r}: {hits[:3]}"
