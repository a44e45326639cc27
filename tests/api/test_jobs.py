"""The job lifecycle over real HTTP, real Redis and real rq worker processes."""
from __future__ import annotations

import base64
import io
import json
import zlib

import pytest
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.conftest import drawing, photo
from tests.servers import wait_until


def png_size(data: bytes):
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    return img.size


def test_stencil_end_to_end(api, workers):
    response = api.submit(photo(), operation="stencil")
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"jobId", "queue", "operation", "status", "statusUrl", "queuePosition", "etaS"}
    assert body["queue"] == "stencil-generation" and body["status"] == "waiting"
    assert response.headers["Location"] == f"/status/{body['jobId']}" == body["statusUrl"]

    seen = []
    def finished():
        status = api.get(body["statusUrl"] + "?queue=stencil-generation").json()
        seen.append((status["status"], status["progress"], status["stage"]))
        return status if status["status"] in ("completed", "failed") else None
    status = wait_until(finished, timeout=60, interval=0.02, what="stencil job")
    assert status["status"] == "completed", status
    assert status["progress"] == 100 and status["error"] is None and status["attempts"] == 1
    assert status["createdAt"].endswith("Z") and status["startedAt"] and status["endedAt"]
    assert any(word == "active" and 0 < progress < 100 for word, progress, _ in seen), seen
    assert all(0 <= progress <= 100 for _, progress, _ in seen)

    image_url = status["result"]["image"]
    assert image_url.startswith(api.url + "/files/")
    unsigned = api.http.get(image_url)
    assert unsigned.status_code == 200 and unsigned.headers["Content-Type"] == "image/png"
    assert png_size(unsigned.content)[0] > 0
    owner = api.get(f"/result/{body['jobId']}")
    assert owner.status_code == 200 and owner.content == unsigned.content


def test_tampered_result_url_is_refused(api, workers):
    job_id = api.submit(drawing()).json()["jobId"]
    url = api.wait(job_id)["result"]["image"]
    bad = url[:-3] + ("aaa" if not url.endswith("aaa") else "bbb")
    response = api.http.get(bad)
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_signed_result_links_are_readable_from_any_origin(api, workers):
    """A signed link is its own credential (as a presigned URL): any page's script may read it, and read
    why it failed; the owner's authenticated paths stay without CORS (CORS_ORIGINS governs those)."""
    job_id = api.submit(drawing(), format="svg").json()["jobId"]
    status = api.wait(job_id)
    for url in (status["result"]["image"], status["result"]["svg"], status["result"]["image"][:-3] + "aaa"):
        response = api.http.get(url, headers={"Origin": "https://front.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "*", url
        assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
        assert "Access-Control-Allow-Credentials" not in response.headers
    owner = api.get(f"/result/{job_id}", headers={"Origin": "https://front.example"})
    assert owner.status_code == 200 and "Access-Control-Allow-Origin" not in owner.headers


def test_result_before_completion_is_404(api, redis):
    job_id = api.submit(drawing(), operation="enhance").json()["jobId"]
    # No worker may have taken it yet or it may be running: either way, no result until completed.
    response = api.get(f"/result/{job_id}")
    if api.get(f"/status/{job_id}").json()["status"] != "completed":
        assert response.status_code in (200, 404)


@pytest.mark.parametrize("method,path", [("GET", "/status/{}"), ("GET", "/result/{}"), ("DELETE", "/jobs/{}"),
                                         ("GET", "/status/{}/events")])
def test_another_users_job_is_404_like_an_unknown_one(api, workers, method, path):
    job_id = api.submit(drawing()).json()["jobId"]
    api.wait(job_id)
    theirs = api.call(method, path.format(job_id), token="tok-bob")
    unknown = api.call(method, path.format("0" * 32), token="tok-bob")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()
    assert job_id not in [j["jobId"] for j in api.get("/jobs", token="tok-bob").json()["jobs"]]


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_unauthenticated(api, token):
    for method, path in [("POST", "/generate"), ("GET", "/status/" + "0" * 32), ("GET", "/jobs"),
                         ("GET", "/result/" + "0" * 32), ("DELETE", "/jobs/" + "0" * 32)]:
        response = api.call(method, path, token=token)
        assert response.status_code == 401, (method, path)
        assert response.json()["code"] == "unauthenticated"


def test_status_words_and_jobs_list(api, workers):
    ids = [api.submit(drawing()).json()["jobId"] for _ in range(3)]
    for job_id in ids:
        assert api.wait(job_id)["status"] == "completed"
    listed = api.get("/jobs?limit=3").json()["jobs"]
    assert [j["jobId"] for j in listed] == ids[::-1]
    assert all(j["status"] == "completed" for j in listed)
    assert api.get("/jobs?status=failed&limit=100").status_code == 200
    for bad in ("?limit=0", "?limit=101", "?limit=x", "?status=done", "?other=1"):
        response = api.get("/jobs" + bad)
        assert response.status_code == 400 and response.json()["code"] == "invalid_request", bad


def test_cancel_waiting_job_never_runs(make_api, redis_url, redis, workers):
    from rq import Queue
    from rq.serializers import JSONSerializer as S

    api = make_api()
    # Hold the only enhance worker busy so the next enhance job waits.
    busy = api.submit(photo((1024, 1024)), operation="enhance").json()["jobId"]
    waiting = api.submit(drawing(), operation="enhance").json()["jobId"]
    assert api.get(f"/status/{waiting}").json()["status"] == "waiting"
    assert redis.ttl(f"inkq:blob:in:{waiting}") > 0  # stored beside the job, with a TTL
    response = api.delete(f"/jobs/{waiting}")
    assert response.status_code == 200, response.text
    assert response.json() == {"jobId": waiting, "status": "canceled"}
    api.wait(busy)
    status = api.get(f"/status/{waiting}").json()
    assert status["status"] == "canceled" and status["attempts"] == 0 and status["startedAt"] is None
    assert waiting not in Queue("enhance", connection=redis, serializer=S).get_job_ids()
    assert not redis.exists(f"inkq:blob:in:{waiting}")
    again = api.delete(f"/jobs/{waiting}")
    assert again.status_code == 409 and again.json()["code"] == "conflict"


def test_cancel_ended_job_is_409(api, workers):
    job_id = api.submit(drawing()).json()["jobId"]
    api.wait(job_id)
    response = api.delete(f"/jobs/{job_id}")
    assert response.status_code == 409 and response.json()["code"] == "conflict"


def test_idempotency_key(api, workers):
    image = drawing()
    first = api.post("/generate", json={"image": base64.b64encode(image).decode()},
                     headers={"Idempotency-Key": "abc-1"})
    again = api.post("/generate", json={"image": base64.b64encode(image).decode()},
                     headers={"Idempotency-Key": "abc-1"})
    assert first.status_code == 202 and again.status_code == 200
    place = ("queuePosition", "etaS")  # the job's place now: it may have started meanwhile
    assert {k: v for k, v in first.json().items() if k not in place} == {k: v for k, v in again.json().items()
                                                                          if k not in place}
    assert set(place) <= set(again.json()) and again.headers["Location"] == first.headers["Location"]
    other = api.post("/generate", json={"image": base64.b64encode(image).decode(), "style": "bold"},
                     headers={"Idempotency-Key": "abc-1"})
    assert other.status_code == 409 and other.json()["code"] == "conflict"
    bob = api.post("/generate", token="tok-bob", json={"image": base64.b64encode(image).decode()},
                   headers={"Idempotency-Key": "abc-1"})
    assert bob.status_code == 202 and bob.json()["jobId"] != first.json()["jobId"]


def test_multipart_upload(api, workers):
    response = api.post("/generate", files={"image": ("photo.jpg", photo((320, 240)), "image/jpeg")},
                        data={"operation": "stencil", "style": "bold"})
    assert response.status_code == 202, response.text
    status = api.wait(response.json()["jobId"])
    assert status["status"] == "completed"
    data = api.get(f"/result/{status['jobId']}").content
    width, height = png_size(data)
    assert abs(width / height - 320 / 240) < 0.02


def test_seed_client_shape_no_content_type(api, workers):
    """The seed's client sends JSON with no Content-Type, no operation, and a data: URL."""
    data_url = "data:image/jpeg;base64," + base64.b64encode(photo((200, 200))).decode()
    response = api.post("/generate", data=json.dumps({"image": data_url, "style": "standard"}))
    assert response.status_code == 202, response.text
    assert response.json()["operation"] == "stencil"


@pytest.mark.parametrize("body,code", [
    ({"image": "!!!not base64!!!"}, 400),
    ({"image": base64.b64encode(b"hello, this is plainly text and not an image").decode()}, 400),
    ({"operation": "paint", "image": "AAAA"}, 400),
    ({"operation": "stencil"}, 400),
    ({"image": 12345}, 400),
    ({"operation": "ia-gen"}, 400),
    ({"image": "AAAA", "unknown": 1}, 400),
])
def test_bad_input_is_a_clear_400(api, body, code):
    response = api.post("/generate", json=body)
    assert response.status_code == code, response.text
    assert response.json()["code"] == "invalid_request" and response.json()["error"]


def test_broken_json_and_wrong_formats(api):
    response = api.post("/generate", data=b'{"image": "abc"', headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
    gif = api.submit(drawing(fmt="GIF"))
    assert gif.status_code == 415 and gif.json()["code"] == "unsupported_media_type"
    urlsafe = base64.urlsafe_b64encode(drawing()).decode()
    spaced = "\n".join(urlsafe[i:i + 60] for i in range(0, len(urlsafe), 60))
    assert api.post("/generate", json={"image": spaced}).status_code == 202


def test_job_record_holds_no_image_and_no_pickle(api, redis, workers):
    image = photo((300, 300))
    job_id = api.submit(image).json()["jobId"]
    api.wait(job_id)
    raw = redis.hgetall(f"rq:job:{job_id}")
    blob = b"".join(raw.values())
    assert image[:64] not in blob and base64.b64encode(image)[:64] not in blob
    assert len(blob) < 8000
    payload = zlib.decompress(raw[b"data"])  # rq compresses the serialized call
    assert json.loads(payload)  # JSON, not pickle
    assert not payload.startswith(b"\x80")
    assert json.loads(raw[b"meta"])["user"] == "alice"
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    spec = job.args[0]
    assert spec["inputKey"] == f"inkq:blob:in:{job_id}" and "image" not in spec["params"]
    output = job.return_value()["outputKey"]  # one per execution: inkq:blob:out:<jobId>/<executionId>
    assert output.startswith(f"inkq:blob:out:{job_id}/") and redis.ttl(output) > 0
    wait_until(lambda: not redis.exists(spec["inputKey"]), timeout=10, what="the input to be dropped")


def test_health_and_errors_are_json(api):
    assert api.get("/healthz", token=None).json() == {"status": "ok"}
    assert api.get("/readyz", token=None).status_code == 200
    missing = api.get("/no/such/path", token=None)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = api.call("PUT", "/generate")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_event_stream_follows_a_job_to_its_end(api, workers):
    job_id = api.submit(photo((400, 400))).json()["jobId"]
    response = api.get(f"/status/{job_id}/events", stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    assert events, "no events"
    assert events[-1]["status"] == "completed" and events[-1]["result"]["image"]
    assert all(a != b for a, b in zip(events, events[1:]))  # only changes are sent
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)


def test_open_event_streams_are_capped_per_user_and_given_back(make_api, redis, user, workers, fake_gemini):
    """MAX_STREAMS_PER_USER across API processes (two here); a stream whose client left gives its lease
    back at its next write (EVENTS_POLL_S), and the lease set expires with its last lease."""
    import requests

    from tasks.core.keys import stream_leases_key
    from tests import fakegemini as fg

    # The streams must stay open: the job's provider calls outlast the workers' 3 s timeout, so it is
    # retried (waiting or active) until the test cancels it, whatever the session's workers do.
    fake_gemini.push(*[fg.slow(10, fg.ok())] * 4)
    config = {"API_KEYS": f"tok-alice:{user},tok-bob:bob", "MAX_STREAMS_PER_USER": 2, "EVENTS_POLL_S": 0.3,
              "GEMINI_API_KEY": "test-key"}
    first, second = make_api(**config), make_api(**config)
    job_id = first.submit(drawing(), engine="gemini").json()["jobId"]
    held = [requests.get(f"{api.url}/status/{job_id}/events", headers={"Authorization": "Bearer tok-alice"},
                         stream=True, timeout=10) for api in (first, second)]
    assert [r.status_code for r in held] == [200, 200]
    refused = second.get(f"/status/{job_id}/events", stream=True)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    bobs = first.submit(drawing(), token="tok-bob").json()["jobId"]
    with requests.get(f"{first.url}/status/{bobs}/events", headers={"Authorization": "Bearer tok-bob"},
                      stream=True, timeout=10) as other_user:
        assert other_user.status_code == 200  # the cap is per user
    first.delete(f"/jobs/{bobs}", token="tok-bob")
    assert 0 < redis.pttl(stream_leases_key(user)) <= 30_000
    held[0].close()
    wait_until(lambda: redis.zcard(stream_leases_key(user)) == 1, timeout=10, what="the lease of the closed stream")
    again = requests.get(f"{second.url}/status/{job_id}/events", headers={"Authorization": "Bearer tok-alice"},
                         stream=True, timeout=10)
    assert again.status_code == 200
    for response in (again, held[1]):
        response.close()
    first.delete(f"/jobs/{job_id}")
    fake_gemini.reset()  # the slow answers the canceled job did not use
    wait_until(lambda: not redis.exists(stream_leases_key(user)), timeout=10, what="the leases to be given back")


def test_redis_down_is_503_with_retry_after(make_api):
    from tests.servers import free_port

    api = make_api(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert api.get("/healthz", token=None).status_code == 200
    ready = api.get("/readyz", token=None)
    assert ready.status_code == 503 and ready.json()["code"] == "unavailable"
    for response in (api.submit(drawing()), api.get("/status/" + "a" * 32), api.get("/jobs")):
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "unavailable" and response.headers["Retry-After"]


def test_unusable_images_fail_with_a_clear_error(api, workers):
    flat = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 40, 40)).save(flat, "PNG")
    for operation in ("stencil", "enhance", "color-match"):
        status = api.wait(api.submit(flat.getvalue(), operation=operation).json()["jobId"])
        assert status["status"] == "failed" and status["attempts"] == 1, status
        assert "colour" in status["error"] or "color" in status["error"], status["error"]
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, "PNG")
    response = api.submit(tiny.getvalue())
    assert response.status_code == 400 and "16" in response.json()["error"]
