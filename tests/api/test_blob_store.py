"""The S3 image store against a real S3 server (SeaweedFS from PyPI, started by the suite), with the
real API over HTTP, a Redis of its own and a real worker service with BLOB_STORE=s3: the core jobs,
presigned result URLs, webhooks, cancel, failure refunds, the blob sweep and direct uploads. The
Redis-mode suite runs unchanged beside it."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
import requests
from PIL import Image

from tasks.core.settings import StoreSettings
from tests import fakegemini as fg
from tests.conftest import ADMIN_TOKEN, S3_BUCKET, S3_STORE, Api, base_config, drawing, photo
from tests.servers import ApiServer, erasure_leftovers, wait_until

pytestmark = pytest.mark.usefixtures("s3_workers")


@pytest.fixture(scope="module", autouse=True)
def retained_in_redis(workers, redis_url):
    """The same with the Redis store, on the suite's shared worker service (its result served behind a signed
    `/files/` link)."""
    from api import create_app

    server = ApiServer(create_app(base_config(redis_url)))
    api = Api(server.url)
    job_id = api.submit(photo((160, 120)), engine="local", format="svg", retentionS=60).json()["jobId"]
    status = api.wait(job_id)
    assert status["status"] == "completed", status
    try:
        yield {"api": api, "jobId": job_id, "ended": time.time(),
               "urls": [status["result"]["image"], status["result"]["svg"]], "redis": redis_url}
    finally:
        server.stop()


@pytest.fixture(scope="module", autouse=True)
def retained_in_the_store(s3_workers, s3_redis, seaweed):
    """A job kept for 60 s after its end (`retentionS`) in the S3 store, submitted as the module starts: its last
    test checks that it and its objects are gone a minute after its end; the module's other tests run meanwhile."""
    from api import create_app

    server = ApiServer(create_app(base_config(s3_redis.url, BLOB_STORE=S3_STORE, **seaweed.env)))
    api = Api(server.url)
    job_id = api.submit(photo((160, 120)), engine="local", format="svg", retentionS=60).json()["jobId"]
    status = api.wait(job_id)
    assert status["status"] == "completed", status
    try:
        yield {"api": api, "jobId": job_id, "ended": time.time(),
               "urls": [status["result"]["image"], status["result"]["svg"]]}
    finally:
        server.stop()


def fetch_png(url: str) -> bytes:
    """GET a result URL without credentials; it must be a PNG served as one, with a download name."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="inkq-')
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    return response.content


def image_bytes_in_redis(client) -> list[str]:
    """Redis keys holding image bytes (the Redis store's keys)."""
    return [k.decode() for k in client.scan_iter("inkq:blob:*")]


def objects(seaweed, kind: str, job_id: str) -> list[str]:
    return [k for k in seaweed.keys(S3_BUCKET, f"jobs/{kind}/") if job_id in k]


def test_stencil_png_and_svg_are_presigned_urls_of_the_store(make_s3_api, seaweed, s3_redis):
    api = make_s3_api()
    response = api.submit(photo((320, 240)), engine="local", format="svg")
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    status = api.wait(job_id)
    assert status["status"] == "completed", status
    image, svg = status["result"]["image"], status["result"]["svg"]
    # one object per execution of the job (tasks/core/blobs.py: output_key)
    assert image.startswith(f"{seaweed.url}/{S3_BUCKET}/jobs/out/{job_id}/") and "X-Amz-Signature=" in image
    png = fetch_png(image)
    svg_response = requests.get(svg, timeout=10)
    assert svg_response.status_code == 200 and svg_response.headers["Content-Type"] == "image/svg+xml"
    assert svg_response.content.lstrip().startswith((b"<?xml", b"<svg"))
    assert f'filename="inkq-{job_id}.svg"' in svg_response.headers["Content-Disposition"]

    # The owner's /result answers 302 to a fresh presigned URL; another user gets the same 404 as an unknown id.
    owner = api.get(f"/result/{job_id}", allow_redirects=False)
    assert owner.status_code == 302 and owner.headers["Location"].startswith(f"{seaweed.url}/{S3_BUCKET}/")
    assert requests.get(owner.headers["Location"], timeout=10).content == png
    theirs, unknown = api.get(f"/result/{job_id}", token="tok-bob"), api.get("/result/" + "0" * 32, token="tok-bob")
    assert theirs.status_code == unknown.status_code == 404 and theirs.json() == unknown.json()

    # The bucket needs no public access: the object without a signature, a tampered one, a listing: all refused.
    bare = image.split("?")[0]
    assert requests.get(bare, timeout=10).status_code == 403
    assert requests.get(image.replace("X-Amz-Signature=", "X-Amz-Signature=0"), timeout=10).status_code == 403
    assert requests.get(f"{seaweed.url}/{S3_BUCKET}", timeout=10).status_code == 403

    # Redis keeps no image bytes; the input is deleted once the job has ended.
    assert image_bytes_in_redis(redis_lib.Redis.from_url(s3_redis.url)) == []
    wait_until(lambda: objects(seaweed, "in", job_id) == [], timeout=10, what="the input object to go")
    assert objects(seaweed, "out", job_id) == [urlsplit(image).path.removeprefix(f"/{S3_BUCKET}/")]  # one


@pytest.mark.parametrize("operation,fields", [
    ("enhance", {"engine": "local"}),
    ("color-match", {}),
    ("ia-gen", {"prompt": "a koi", "engine": "gemini"}),  # the fake Gemini, with a reference image
])
def test_core_operations_in_s3_mode(make_s3_api, operation, fields):
    api = make_s3_api()
    response = api.submit(drawing((128, 128)), operation=operation, **fields)
    assert response.status_code == 202, response.text
    status = api.wait(response.json()["jobId"])
    assert status["status"] == "completed", status
    assert "outputKey" not in status["result"]
    fetch_png(status["result"]["image"])


def test_webhook_result_image_is_a_real_url(make_s3_api, receiver):
    from standardwebhooks.webhooks import Webhook

    from tests.conftest import WEBHOOK_SECRET

    url, calls = receiver
    api = make_s3_api()
    job_id = api.submit(drawing(), engine="local", webhookUrl=url).json()["jobId"]
    headers, body = calls.get(timeout=30)
    event = Webhook(WEBHOOK_SECRET).verify(body, headers)
    assert event["jobId"] == job_id and event["status"] == "completed"
    fetch_png(event["result"]["image"])


def test_failure_is_refunded_and_its_input_deleted(make_s3_api, fake_gemini, seaweed):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="0")
    assert api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 5}).status_code == 200
    fake_gemini.push(fg.blocked("SAFETY"))
    job_id = api.submit(drawing(), operation="ia-gen", prompt="x").json()["jobId"]
    status = api.wait(job_id)
    assert status["status"] == "failed" and "safety" in status["error"].lower()
    assert wait_until(lambda: api.get("/credits").json()["balance"] == 5, timeout=10)
    wait_until(lambda: objects(seaweed, "in", job_id) == [], timeout=10, what="the input object to go")


def test_cancel_of_a_waiting_job_deletes_its_input(make_s3_api, fake_gemini, seaweed):
    api = make_s3_api()
    fake_gemini.push(fg.slow(3))
    busy = api.post("/generate", json={"operation": "ia-gen", "prompt": "x"}).json()["jobId"]
    waiting = api.submit(drawing(), operation="ia-gen", prompt="y").json()["jobId"]
    assert objects(seaweed, "in", waiting) == [f"jobs/in/{waiting}"]
    assert api.delete(f"/jobs/{waiting}").status_code == 200
    assert objects(seaweed, "in", waiting) == []
    api.delete(f"/jobs/{busy}")
    api.wait(busy)


def test_the_workers_blob_sweep_deletes_what_is_due(s3_redis, seaweed):
    """What a job writes is due after its TTL; the worker service's sweep deletes it, with no lifecycle rule."""
    from tasks.core import blobs

    client = redis_lib.Redis.from_url(s3_redis.url)
    store = blobs.store(client, StoreSettings.from_env({"BLOB_STORE": f"s3://{S3_BUCKET}/jobs", **seaweed.env}))
    store.save(blobs.output_key("sweep-short"), b"x", 1, "image/png")
    store.save(blobs.output_key("sweep-long"), b"x", 3600, "image/png")
    assert store.exists(blobs.output_key("sweep-short"))
    # the sweep deletes the object, then its entry (never the other way round, or a crash between the
    # two would leak the object): both must go
    wait_until(lambda: not store.exists(blobs.output_key("sweep-short"))
               and client.zscore(blobs.EXPIRY_KEY, blobs.output_key("sweep-short")) is None,
               timeout=10, what="the sweep")
    assert store.exists(blobs.output_key("sweep-long"))
    store.delete(blobs.output_key("sweep-long"))
    assert not store.exists(blobs.output_key("sweep-long"))


def test_a_result_is_due_after_result_ttl(make_s3_api, s3_redis):
    api = make_s3_api()
    job_id = api.submit(drawing(), engine="local").json()["jobId"]
    assert api.wait(job_id)["status"] == "completed"
    output = redis_lib.Redis.from_url(s3_redis.url).zrangebyscore("inkq:blobs:expiry", "-inf", "+inf")
    output = [key.decode() for key in output if key.decode().startswith(f"inkq:blob:out:{job_id}/")]
    assert len(output) == 1, output  # one object, of the one execution
    due = redis_lib.Redis.from_url(s3_redis.url).zscore("inkq:blobs:expiry", output[0])
    assert due is not None and abs(due - (time.time() + 86400)) < 120


# Direct uploads ----------------------------------------------------------------------------------------


def new_upload(api, content_type="image/png", token="tok-alice") -> dict:
    """POST /uploads: {uploadId, url, fields, expiresAt}."""
    created = api.post("/uploads", token=token, json={"contentType": content_type})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"uploadId", "url", "fields", "expiresAt"} and body["expiresAt"].endswith("Z")
    return body


def post_form(form: dict, data: bytes, content_type="image/png", send_type=None, url=None) -> requests.Response:
    """The form upload to the store, as a client (or an attacker holding the form) sends it."""
    fields = dict(form["fields"])
    if send_type:
        fields["Content-Type"] = send_type
    return requests.post(url or form["url"], data=fields, files={"file": ("photo", data, content_type)}, timeout=10)


def upload(api, data: bytes, content_type="image/png", token="tok-alice", send_type=None):
    """POST /uploads, then the form upload to the store; (uploadId, the store's answer)."""
    form = new_upload(api, content_type, token)
    return form["uploadId"], post_form(form, data, content_type, send_type)


def test_direct_upload_then_submit(make_s3_api, seaweed):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="0")
    api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 3})
    upload_id, answer = upload(api, drawing())
    assert answer.status_code == 204, answer.text
    assert api.post("/generate", token="tok-bob", json={"upload": upload_id}).json()["code"] == "not_found"
    response = api.post("/generate", json={"upload": upload_id, "engine": "local"})
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    assert seaweed.keys(S3_BUCKET, f"jobs/up/{upload_id}") == []  # the job has its own copy
    status = api.wait(job_id)
    assert status["status"] == "completed", status
    fetch_png(status["result"]["image"])
    again = api.post("/generate", json={"upload": upload_id})
    assert again.status_code == 409 and again.json()["code"] == "conflict"
    assert api.get("/credits").json()["balance"] == 2  # one job, one charge


def test_direct_upload_refusals_charge_nothing(make_s3_api, seaweed):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="0", MAX_UPLOAD_MB="0.05")
    api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 3})
    assert api.post("/uploads", json={"contentType": "image/gif"}).json()["code"] == "unsupported_media_type"
    assert api.post("/uploads", json={"nope": 1}).json()["code"] == "invalid_request"
    # The store itself enforces the policy: size and Content-Type.
    _, too_big = upload(api, photo((1024, 1024)), "image/jpeg")
    assert too_big.status_code == 400 and b"EntityTooLarge" in too_big.content
    _, other_type = upload(api, drawing(), send_type="image/gif")
    assert other_type.status_code == 403
    # Never uploaded, not an image, or an unknown id: refused before anything is charged.
    empty = api.post("/uploads", json={"contentType": "image/png"}).json()["uploadId"]
    assert api.post("/generate", json={"upload": empty}).json()["code"] == "invalid_request"
    fake, answer = upload(api, b"this is not a png at all" * 10)
    assert answer.status_code == 204
    refused = api.post("/generate", json={"upload": fake})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_request"
    assert seaweed.keys(S3_BUCKET, f"jobs/up/{fake}") == []
    assert api.post("/generate", json={"upload": "0" * 32}).json()["code"] == "not_found"
    both = api.post("/generate", json={"upload": empty, "image": base64.b64encode(drawing()).decode()})
    assert both.status_code == 400
    assert api.get("/credits").json()["balance"] == 3


def test_a_refused_admission_leaves_the_upload_usable(make_s3_api):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="0")
    api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 0})
    upload_id, _ = upload(api, drawing())
    assert api.post("/generate", json={"upload": upload_id}).json()["code"] == "insufficient_credits"
    api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 1})
    response = api.post("/generate", json={"upload": upload_id, "engine": "local"})
    assert response.status_code == 202, response.text
    assert api.wait(response.json()["jobId"])["status"] == "completed"


def test_unused_uploads_are_deleted_after_upload_ttl(make_s3_api, seaweed):
    api = make_s3_api(UPLOAD_TTL_S="1")
    upload_id, answer = upload(api, drawing())
    assert answer.status_code == 204
    wait_until(lambda: seaweed.keys(S3_BUCKET, f"jobs/up/{upload_id}") == [], timeout=10, what="the upload to go")
    assert api.post("/generate", json={"upload": upload_id}).json()["code"] == "not_found"


def _own_user(make_s3_api, **extra):
    """An API whose key `tok-own` belongs to a user no other test uses (the S3 stack's Redis is shared)."""
    user = f"own-{uuid.uuid4().hex[:12]}"
    return make_s3_api(API_KEYS=f"tok-alice:alice,tok-bob:bob,tok-own:{user}", **extra), user


def test_unused_uploads_per_user_are_capped(make_s3_api, s3_redis):
    api, user = _own_user(make_s3_api, MAX_OPEN_UPLOADS_PER_USER="3")
    opened = [upload(api, drawing(), token="tok-own") for _ in range(3)]
    refused = api.post("/uploads", token="tok-own", json={"contentType": "image/png"})
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited", refused.text
    assert 3000 <= int(refused.headers["Retry-After"]) <= 3600  # until the oldest expires (UPLOAD_TTL_S)
    assert api.post("/uploads", token="tok-bob", json={"contentType": "image/png"}).status_code == 201
    client = redis_lib.Redis.from_url(s3_redis.url)
    key = f"inkq:uploads:{user}"
    assert client.zcard(key) == 3 and 0 < client.ttl(key) <= 3600
    # A job that uses one frees its slot; so does an upload whose object fails its checks.
    response = api.post("/generate", token="tok-own", json={"upload": opened[0][0], "engine": "local"})
    assert response.status_code == 202, response.text
    assert client.zcard(key) == 2
    bad, _ = upload(api, b"not an image at all" * 20, token="tok-own")
    assert api.post("/generate", token="tok-own", json={"upload": bad}).status_code == 400
    assert client.zcard(key) == 2
    assert api.post("/uploads", token="tok-own", json={"contentType": "image/png"}).status_code == 201
    assert api.post("/uploads", token="tok-own", json={"contentType": "image/png"}).status_code == 429
    assert api.wait(response.json()["jobId"], token="tok-own")["status"] == "completed"


def test_concurrent_upload_requests_cannot_pass_the_cap_together(make_s3_api, s3_redis):
    api, user = _own_user(make_s3_api, MAX_OPEN_UPLOADS_PER_USER="4")
    barrier = threading.Barrier(16)

    def one(_):
        session = requests.Session()
        barrier.wait()
        return session.post(api.url + "/uploads", headers={"Authorization": "Bearer tok-own"},
                            json={"contentType": "image/jpeg"}, timeout=30).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = sorted(pool.map(one, range(16)))
    assert codes == [201] * 4 + [429] * 12, codes
    assert redis_lib.Redis.from_url(s3_redis.url).zcard(f"inkq:uploads:{user}") == 4


def test_an_expired_upload_frees_its_slot(make_s3_api):
    api, _ = _own_user(make_s3_api, MAX_OPEN_UPLOADS_PER_USER="1", UPLOAD_TTL_S="1")
    assert api.post("/uploads", token="tok-own", json={"contentType": "image/png"}).status_code == 201
    refused = api.post("/uploads", token="tok-own", json={"contentType": "image/png"})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    time.sleep(1.2)
    assert api.post("/uploads", token="tok-own", json={"contentType": "image/png"}).status_code == 201


def test_creating_uploads_counts_against_the_request_limit(make_s3_api):
    api, _ = _own_user(make_s3_api, READ_RATE_LIMIT="2/minute")
    codes = [api.post("/uploads", token="tok-own", json={"contentType": "image/png"}).status_code for _ in range(3)]
    assert codes == [201, 201, 429], codes


def test_uploads_are_404_with_the_redis_store(api):
    response = api.post("/uploads", json={"contentType": "image/png"})
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert api.post("/generate", json={"upload": "0" * 32}).json()["code"] == "not_found"


# A form outlives its upload: what an attacker holding one can do ----------------------------------------

JUNK = b"these bytes are not an image at all " * 20


def expires_in(form: dict) -> float:
    """Seconds until the form's expiresAt."""
    return datetime.fromisoformat(form["expiresAt"].replace("Z", "+00:00")).timestamp() - time.time()


def test_no_object_outlives_its_upload_form(make_s3_api, seaweed, s3_redis):
    """A presigned form cannot be revoked: after its upload was used by a job, or refused by its checks
    (free: nothing is charged), posting the form again still writes its key until the form expires. The
    workers' blob sweep deletes whatever is there once the form has expired (UPLOAD_TTL_S=6: the form
    lasts 3 s, its key is swept at 6 s), whatever became of the upload."""
    api, _ = _own_user(make_s3_api, UPLOAD_TTL_S="6")
    used, refused = new_upload(api, token="tok-own"), new_upload(api, token="tok-own")
    assert all(0 < expires_in(form) <= 3.5 for form in (used, refused))  # before the upload's 6 s

    def left() -> list[str]:
        return [k for form in (used, refused) for k in seaweed.keys(S3_BUCKET, f"jobs/up/{form['uploadId']}")]

    assert post_form(used, drawing()).status_code == post_form(refused, JUNK).status_code == 204
    job = api.post("/generate", token="tok-own", json={"upload": used["uploadId"], "engine": "local"})
    assert job.status_code == 202, job.text
    assert api.post("/generate", token="tok-own", json={"upload": refused["uploadId"]}).status_code == 400
    assert left() == []  # both objects deleted at once
    for form in (used, refused):
        assert post_form(form, JUNK * 100).status_code == 204  # the forms still work
    assert len(left()) == 2
    time.sleep(max(expires_in(used), expires_in(refused)) + 1)
    for form in (used, refused):
        late = post_form(form, JUNK)
        assert late.status_code == 403 and b"xpired" in late.content, late.text
    wait_until(lambda: left() == [], timeout=15, what="the blob sweep to delete what the forms wrote again")
    client = redis_lib.Redis.from_url(s3_redis.url)
    assert [client.zscore("inkq:blobs:expiry", f"inkq:blob:up:{f['uploadId']}") for f in (used, refused)] == [None] * 2
    assert api.wait(job.json()["jobId"], token="tok-own")["status"] == "completed"


def test_a_refused_upload_is_dead_for_good(make_s3_api):
    """An upload whose object fails its checks frees its slot and never serves a job, whatever is posted to
    its form since: with a cap of 3, a user holds at most 3 usable uploads. One with nothing uploaded yet
    stays usable."""
    api, _ = _own_user(make_s3_api, MAX_OPEN_UPLOADS_PER_USER="3")
    dead = [new_upload(api, token="tok-own") for _ in range(3)]
    for form in dead:
        assert post_form(form, JUNK).status_code == 204
        refused = api.post("/generate", token="tok-own", json={"upload": form["uploadId"]})
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_request", refused.text
    fresh = [new_upload(api, token="tok-own") for _ in range(3)]  # the refused uploads' slots are free
    assert api.post("/uploads", token="tok-own", json={"contentType": "image/png"}).status_code == 429
    empty = api.post("/generate", token="tok-own", json={"upload": fresh[0]["uploadId"]})
    assert empty.status_code == 400 and "Nothing was uploaded" in empty.json()["error"]
    for form in dead + fresh:
        assert post_form(form, drawing()).status_code == 204  # a refused upload's form still works
    answers = [api.post("/generate", token="tok-own", json={"upload": form["uploadId"], "engine": "local"})
               for form in dead + fresh]
    assert [a.status_code for a in answers] == [409] * 3 + [202] * 3, [a.text for a in answers]
    assert all(a.json()["code"] == "conflict" and "refused: `image` is not an image" in a.json()["error"]
               for a in answers[:3]), answers[0].text
    for accepted in answers[3:]:
        assert api.wait(accepted.json()["jobId"], token="tok-own")["status"] == "completed"


def test_an_idempotent_retry_with_an_upload_gets_the_original_job(make_s3_api):
    """The Idempotency-Key is judged before the upload: a retry gets the original job (200), as with an
    inline image; another key with the same upload is 409, the same key with another body too."""
    api, _ = _own_user(make_s3_api)
    upload_id, _ = upload(api, drawing(), token="tok-own")
    body = {"upload": upload_id, "engine": "local"}
    first = api.post("/generate", token="tok-own", json=body, headers={"Idempotency-Key": "same"})
    assert first.status_code == 202, first.text
    retry = api.post("/generate", token="tok-own", json=body, headers={"Idempotency-Key": "same"})
    assert retry.status_code == 200, retry.text
    assert retry.json()["jobId"] == first.json()["jobId"] and retry.headers["Location"] == first.headers["Location"]
    other_key = api.post("/generate", token="tok-own", json=body, headers={"Idempotency-Key": "other"})
    assert other_key.status_code == 409 and "already used by a job" in other_key.json()["error"]
    other_body = api.post("/generate", token="tok-own", json={**body, "engine": "auto"},
                          headers={"Idempotency-Key": "same"})
    assert other_body.status_code == 409 and "different request" in other_body.json()["error"]
    assert api.wait(first.json()["jobId"], token="tok-own")["status"] == "completed"


def test_an_upload_recorded_without_closes_still_serves_a_job(make_s3_api, s3_redis):
    """A record written before forms had `closes` (an upload open across an upgrade): its job is queued, and
    its key is swept no earlier than its form could still have written it (within POST_TTL_S + grace)."""
    api, _ = _own_user(make_s3_api)
    upload_id, _ = upload(api, drawing(), token="tok-own")
    client = redis_lib.Redis.from_url(s3_redis.url)
    client.hdel(f"inkq:upload:{upload_id}", "closes")
    job = api.post("/generate", token="tok-own", json={"upload": upload_id, "engine": "local"})
    assert job.status_code == 202, job.text
    due = client.zscore("inkq:blobs:expiry", f"inkq:blob:up:{upload_id}")
    assert due is not None and abs(due - (time.time() + 960)) < 30
    assert api.wait(job.json()["jobId"], token="tok-own")["status"] == "completed"


class S3Hop:
    """A real HTTP hop between the API and the S3 server, forwarding every request unchanged (its Host
    header included: SigV4 signed it), that calls `before()` and `after()` around the API's server-side
    copy of an upload: an attacker's form post lands at exactly that moment."""

    def __init__(self, target: str):
        self.target = urlsplit(target)
        self.before = self.after = lambda: None
        hop = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                copying = "/up/" in self.headers.get("x-amz-copy-source", "")
                if copying:
                    hop.before()
                conn = http.client.HTTPConnection(hop.target.hostname, hop.target.port, timeout=30)
                conn.request(self.command, self.path, body=body,
                             headers={k: v for k, v in self.headers.items() if k.lower() != "expect"})
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                if copying:
                    hop.after()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                head = self.command == "HEAD"
                self.send_header("Content-Length", answer.getheader("Content-Length", "0") if head else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_hop(seaweed):
    hop = S3Hop(seaweed.url)
    yield hop
    hop.close()


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_job_runs_on_the_bytes_that_were_checked(make_s3_api, seaweed, s3_hop, when):
    """The form can be posted again while `/generate` takes its upload. The API copies the object to the
    job's input key, which no form can write, and checks the copy: an attacker's post just before the copy
    is refused by the checks (400), one just after it changes nothing (the job runs on the checked image).
    Never does a job get bytes that were not checked."""
    api, _ = _own_user(make_s3_api, S3_ENDPOINT_URL=s3_hop.url)
    form = new_upload(api, token="tok-own")
    direct = form["url"].replace(s3_hop.url, seaweed.url)
    assert post_form(form, drawing(), url=direct).status_code == 204
    posted: list[int] = []
    setattr(s3_hop, when, lambda: posted.append(post_form(form, JUNK, url=direct).status_code))
    response = api.post("/generate", token="tok-own", json={"upload": form["uploadId"], "engine": "local"})
    assert posted == [204]
    if when == "before":
        assert response.status_code == 400 and "not an image" in response.json()["error"], response.text
    else:
        assert response.status_code == 202, response.text
        assert api.wait(response.json()["jobId"], token="tok-own")["status"] == "completed"
    # The form cannot write anywhere but its upload's key (the job inputs' prefix included).
    sneaky = dict(form, fields={**form["fields"], "key": form["fields"]["key"].replace("/up/", "/in/")})
    assert post_form(sneaky, JUNK, url=direct).status_code == 403


# Faults: the real server stopped and started again ----------------------------------------------------


@pytest.fixture
def stopped(seaweed):
    """Stop the S3 server for the test; it is started again (same data and port) afterwards in any case."""
    def start():
        if seaweed.proc.poll() is not None:
            seaweed.start()
    yield seaweed
    start()


def test_store_down_at_submit_is_503_and_nothing_is_queued(make_s3_api, stopped, s3_redis):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="0")
    api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 2})
    client = redis_lib.Redis.from_url(s3_redis.url)
    before = {key: client.llen(key) for key in (b"rq:queue:stencil-generation",)}
    indexed = client.zcard("inkq:user:alice:jobs")
    stopped.stop()
    response = api.submit(drawing(), engine="local")
    assert response.status_code == 503 and response.json()["code"] == "storage_unavailable", response.text
    assert int(response.headers["Retry-After"]) > 0
    assert {key: client.llen(key) for key in before} == before
    assert client.zcard("inkq:user:alice:jobs") == indexed
    assert api.get("/credits").json()["balance"] == 2
    ready = api.get("/readyz", token=None)
    assert ready.status_code == 503 and "S3_ENDPOINT_URL" in ready.json()["error"]
    stopped.start()
    assert api.get("/readyz", token=None).status_code == 200
    job_id = api.submit(drawing(), engine="local").json()["jobId"]
    assert api.wait(job_id)["status"] == "completed"


def test_store_down_in_a_worker_is_retried_and_completes(make_s3_api, stopped, fake_gemini):
    api = make_s3_api()
    fake_gemini.push(fg.slow(3))
    job_id = api.submit(drawing(), operation="ia-gen", prompt="x").json()["jobId"]
    wait_until(lambda: api.get(f"/status/{job_id}").json()["stage"] == "sending to Gemini", timeout=20)
    stopped.stop()  # the result cannot be stored: the attempt fails as transient and is retried
    wait_until(lambda: api.get(f"/status/{job_id}").json()["attempts"] >= 1
               and api.get(f"/status/{job_id}").json()["status"] == "waiting", timeout=20, what="a retry")
    stopped.start()
    status = api.wait(job_id, timeout=60)
    assert status["status"] == "completed" and status["attempts"] >= 2, status
    fetch_png(status["result"]["image"])


def test_store_down_for_good_in_a_worker_fails_and_refunds(make_s3_api, stopped, fake_gemini, s3_redis):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="0")
    api.post("/admin/credits/alice", token="admin-secret-token", json={"set": 4})
    fake_gemini.push(fg.slow(2))
    job_id = api.submit(drawing(), operation="ia-gen", prompt="x").json()["jobId"]
    assert api.get("/credits").json()["balance"] == 2
    wait_until(lambda: api.get(f"/status/{job_id}").json()["stage"] == "sending to Gemini", timeout=20)
    stopped.stop()
    status = api.wait(job_id, timeout=60)
    assert status["status"] == "failed" and "image store" in status["error"], status
    assert status["attempts"] == 4  # the first and three retries, with backoff
    assert wait_until(lambda: api.get("/credits").json()["balance"] == 4, timeout=10)
    # its input could not be deleted at the end: it is due now, and the blob sweep deletes it once the store is back
    client = redis_lib.Redis.from_url(s3_redis.url)
    wait_until(lambda: client.zscore("inkq:blobs:expiry", f"inkq:blob:in:{job_id}") == 0, timeout=10,
               what="the input to be due now (dropped just after the end is written)")
    stopped.start()
    wait_until(lambda: objects(stopped, "in", job_id) == [], timeout=15, what="the sweep to delete the input")
    assert client.zscore("inkq:blobs:expiry", f"inkq:blob:in:{job_id}") is None


@pytest.mark.parametrize("setting,value,named", [
    ("BLOB_STORE", "s3://no-such-bucket", "BLOB_STORE"),
    ("AWS_SECRET_ACCESS_KEY", "wrong-secret", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
])
def test_wrong_credentials_or_missing_bucket(make_s3_api, seaweed, caplog, setting, value, named):
    from tasks.core import blobs
    from tasks.runtime import cli

    api = make_s3_api(**{setting: value})
    assert any(named in r.getMessage() for r in caplog.records if r.name == "inkq.api"), caplog.text
    ready = api.get("/readyz", token=None)
    assert ready.status_code == 503 and named in ready.json()["error"]
    caplog.clear()
    env = {"BLOB_STORE": f"s3://{S3_BUCKET}", **seaweed.env, setting: value}
    cli.check_store(blobs.store(None, StoreSettings.from_env(env)))
    assert any(named in r.getMessage() for r in caplog.records if r.name == "inkq.workers"), caplog.text


def test_web_page_shows_a_result_from_the_store(make_s3_api, seaweed, tmp_path):
    """The page in Chromium: the result <img> and the download link are the store's presigned URLs."""
    from tests.api.test_web import CHROMIUM, _wait_done, _watch_console

    sync_api = pytest.importorskip("playwright.sync_api")
    api = make_s3_api()
    path = tmp_path / "photo.jpg"
    path.write_bytes(photo((256, 256)))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        problems = _watch_console(page)
        page.goto(api.url + "/")
        page.fill("#api-key", "tok-alice")
        page.set_input_files("#image", str(path))
        page.click("#submit")
        _wait_done(page)
        assert page.get_attribute("#result-img", "src").startswith(seaweed.url)
        assert page.get_attribute("#download", "href").startswith(seaweed.url)
        assert problems == []
        browser.close()


def test_status_lists_and_events_agree_on_presigned_urls(make_s3_api, seaweed):
    api = make_s3_api()
    job_id = api.submit(drawing(), engine="local").json()["jobId"]
    api.wait(job_id)
    listed = [j for j in api.get("/jobs?limit=5").json()["jobs"] if j["jobId"] == job_id][0]
    events = api.get(f"/status/{job_id}/events").text
    last = json.loads([line for line in events.splitlines() if line.startswith("data:")][-1][5:])
    for body in (listed, last):
        assert urlsplit(body["result"]["image"]).path.startswith(f"/{S3_BUCKET}/jobs/out/{job_id}/")


def test_the_command_line_saves_results_from_the_store(make_s3_api, tmp_path):
    """`inkq -o` downloads the presigned URL without sending its Bearer token to the store."""
    from tests.test_cli import inkq

    api = make_s3_api()
    source = tmp_path / "photo.jpg"
    source.write_bytes(photo((128, 128)))
    for name, magic in (("stencil.png", b"\x89PNG"), ("stencil.svg", b"<?xml")):
        done = inkq(api, "generate", str(source), "--engine", "local", "-o", str(tmp_path / name))
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / name).read_bytes().startswith(magic)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_seed_polling_client_works_unchanged_with_the_store(make_s3_api, seaweed, tmp_path):
    """The seed's own `generateStencil` in Node (tests/test_processes.py), unchanged: it polls, gets
    `result.image` as a presigned URL of the store and downloads the PNG from it with no credentials."""
    from tests.test_processes import SEED_CLIENT

    api = make_s3_api()
    script, picture = tmp_path / "seed_client.js", tmp_path / "photo.jpg"
    script.write_text(SEED_CLIENT.replace("console.log('RESULT', png.status",
                                          "console.log('URL', url);\n  console.log('RESULT', png.status"))
    picture.write_bytes(photo((300, 300)))
    proc = subprocess.run(["node", str(script), str(picture)], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "INKQ_URL": api.url, "INKQ_TOKEN": "tok-alice"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT 200 image/png" in proc.stdout
    assert f"URL {seaweed.url}/{S3_BUCKET}/jobs/out/" in proc.stdout


# Erasure ------------------------------------------------------------------------------------------------


def bucket_traces(seaweed, needles) -> list[str]:
    """Every object of the bucket whose key names one of the needles (a job's objects are keyed by its id,
    an upload's by its id)."""
    client, found, token = seaweed.client(), [], None
    while True:
        answer = client.list_objects_v2(Bucket=S3_BUCKET, **({"ContinuationToken": token} if token else {}))
        found += [item["Key"] for item in answer.get("Contents", []) if any(n in item["Key"] for n in needles)]
        token = answer.get("NextContinuationToken")
        if not answer.get("IsTruncated"):
            return found


def test_erasing_a_job_deletes_its_objects_and_its_urls_stop_working(make_s3_api, seaweed, s3_redis):
    api = make_s3_api(CREDITS_ENABLED="true", CREDITS_INITIAL="10")
    upload_id, _ = upload(api, drawing())
    from_upload = api.post("/generate", json={"upload": upload_id, "engine": "local"}).json()["jobId"]
    inline = api.submit(photo((160, 120)), engine="local", format="svg").json()["jobId"]
    theirs = api.submit(drawing(), token="tok-bob", engine="local").json()["jobId"]
    urls = []
    for job_id in (from_upload, inline):
        status = api.wait(job_id)
        assert status["status"] == "completed", status
        urls += [url for url in (status["result"]["image"], status["result"].get("svg")) if url]
    assert len(urls) == 3 and all(requests.get(url, timeout=10).status_code == 200 for url in urls)
    assert len(bucket_traces(seaweed, [from_upload, inline])) == 3
    assert api.delete(f"/jobs/{inline}/data", token="tok-bob").status_code == 404  # not bob's: nothing erased

    for job_id in (from_upload, inline):
        assert api.delete(f"/jobs/{job_id}/data").status_code == 204
        assert api.get(f"/status/{job_id}").status_code == 404
    for url in urls:  # presigned URLs of objects that no longer exist
        assert requests.get(url, timeout=10).status_code == 404
    assert bucket_traces(seaweed, [from_upload, inline]) == []
    assert erasure_leftovers(redis_lib.Redis.from_url(s3_redis.url), [from_upload, inline]) == []
    assert api.post("/generate", json={"upload": upload_id}).json()["code"] == "not_found"  # its record went too
    kept = api.wait(theirs, token="tok-bob")
    assert kept["status"] == "completed" and requests.get(kept["result"]["image"], timeout=10).status_code == 200


def test_erasing_a_user_deletes_their_objects_uploads_and_keys(make_s3_api, seaweed, s3_redis):
    api, user = _own_user(make_s3_api, CREDITS_ENABLED="true", CREDITS_INITIAL="10")
    unused, _ = upload(api, drawing(), token="tok-own")
    dead, _ = upload(api, b"not an image at all" * 20, token="tok-own")
    assert api.post("/generate", token="tok-own", json={"upload": dead}).status_code == 400  # refused for good
    used, _ = upload(api, drawing(), token="tok-own")
    jobs = [api.post("/generate", token="tok-own", json={"upload": used, "engine": "local"}).json()["jobId"],
            api.submit(photo((160, 120)), token="tok-own", engine="local", format="svg").json()["jobId"]]
    for job_id in jobs:
        assert api.wait(job_id, token="tok-own")["status"] == "completed"
    theirs = api.submit(drawing(), engine="local").json()["jobId"]
    path = f"/admin/users/{user}/data"
    assert api.delete(path, token="tok-own").status_code == 403 and api.delete(path, token=None).status_code == 401
    assert len(bucket_traces(seaweed, [*jobs, unused])) == 4

    answer = api.delete(path, token=ADMIN_TOKEN)
    assert answer.status_code == 200 and answer.json() == {"jobs": 2, "objects": 4}, answer.text
    assert bucket_traces(seaweed, [*jobs, unused]) == []
    assert erasure_leftovers(redis_lib.Redis.from_url(s3_redis.url), [user, *jobs]) == []
    for upload_id in (unused, dead, used):
        assert api.post("/generate", token="tok-own", json={"upload": upload_id}).json()["code"] == "not_found"
    kept = api.wait(theirs)
    assert kept["status"] == "completed" and requests.get(kept["result"]["image"], timeout=10).status_code == 200


@pytest.mark.parametrize("store", ["redis", "s3"])
def test_a_job_kept_for_retention_s_is_gone_a_minute_after_it_ends(store, retained_in_redis, retained_in_the_store,
                                                                    seaweed, s3_redis):
    """Last in the module: the jobs submitted as it started, with retentionS=60, are erased by the workers'
    retention sweep a minute after their end: status 404, every link dead (a signed `/files/` link, presigned
    URLs of objects deleted), nothing of them in Redis or the bucket."""
    retained = retained_in_redis if store == "redis" else retained_in_the_store
    api, job_id = retained["api"], retained["jobId"]
    remaining = retained["ended"] + 60 - time.time()
    if remaining > 5:  # still within its retention: all there
        assert api.get(f"/status/{job_id}").json()["status"] == "completed"
        assert all(requests.get(url, timeout=10).status_code == 200 for url in retained["urls"])
    wait_until(lambda: api.get(f"/status/{job_id}").status_code == 404, timeout=max(remaining, 0) + 30,
               interval=0.5, what="the retained job to be erased")
    assert time.time() >= retained["ended"] + 60 - 2  # not before its time (it ended before `ended`)
    for url in retained["urls"]:
        assert requests.get(url, timeout=10).status_code == 404
    assert bucket_traces(seaweed, [job_id]) == []
    assert erasure_leftovers(redis_lib.Redis.from_url(retained.get("redis") or s3_redis.url), [job_id]) == []
