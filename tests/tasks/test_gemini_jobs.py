"""Gemini through the real google-genai client in real worker processes, against the fake server."""
from __future__ import annotations

import io

from PIL import Image

from tests import fakegemini as fg
from tests.conftest import drawing, photo


def gemini_api(make_api):
    return make_api(GEMINI_API_KEY="test-key")


def test_stencil_through_gemini(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    art = fg.sample_png(96)
    fake_gemini.push(fg.ok(art))
    source = photo((200, 200))
    job_id = api.submit(source, style="bold", prompt="keep the helmet").json()["jobId"]
    status = api.wait(job_id)
    assert status["status"] == "completed", status
    assert status["result"]["engine"] == "gemini"
    request = fake_gemini.requests[-1]
    assert request.images and request.images[0] == source
    assert "keep the helmet" in request.text and "stencil" in request.text.lower()
    out = Image.open(io.BytesIO(api.get(f"/result/{job_id}").content))
    assert out.size == Image.open(io.BytesIO(art)).size


def test_ia_gen_needs_a_provider(make_api):
    api = make_api()  # no GEMINI_API_KEY on the API side
    response = api.post("/generate", json={"operation": "ia-gen", "prompt": "a koi fish"})
    assert response.status_code == 503 and response.json()["code"] == "provider_unavailable"
    assert response.headers["Retry-After"]


def test_ia_gen_prompt_only(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    response = api.post("/generate", json={"operation": "ia-gen", "prompt": "a koi fish with waves"})
    assert response.status_code == 202 and response.json()["queue"] == "ia-gen"
    status = api.wait(response.json()["jobId"])
    assert status["status"] == "completed", status
    assert "koi fish with waves" in fake_gemini.requests[-1].text
    assert not fake_gemini.requests[-1].images


def test_429_with_retry_info_then_success(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    fake_gemini.push(fg.error(429, retry_delay="1s"), fg.ok())
    status = api.wait(api.submit(drawing()).json()["jobId"])
    assert status["status"] == "completed", status
    assert status["attempts"] == 2 and len(fake_gemini.requests) == 2


def test_500_until_retries_run_out(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    fake_gemini.push(*[fg.error(500, retry_delay="1s") for _ in range(6)])
    status = api.wait(api.submit(drawing(), operation="enhance").json()["jobId"], timeout=90)
    assert status["status"] == "failed"
    assert status["attempts"] == 4 and len(fake_gemini.requests) == 4  # 1 + 3 retries
    assert "temporarily unavailable" in status["error"] and "Traceback" not in status["error"]


def test_safety_block_fails_at_once(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    fake_gemini.push(fg.blocked("PROHIBITED_CONTENT"))
    status = api.wait(api.submit(drawing()).json()["jobId"])
    assert status["status"] == "failed" and status["attempts"] == 1
    assert "safety" in status["error"]
    fake_gemini.push(fg.finish("IMAGE_SAFETY"))
    status = api.wait(api.submit(drawing()).json()["jobId"])
    assert status["status"] == "failed" and "IMAGE_SAFETY" in status["error"]


def test_text_only_answer_fails(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    fake_gemini.push(fg.text_only("I would rather describe it in words."))
    status = api.wait(api.submit(drawing()).json()["jobId"])
    assert status["status"] == "failed" and status["attempts"] == 1
    assert "no image" in status["error"]


def test_answer_slower_than_timeout_is_retried(make_api, workers, fake_gemini):
    api = gemini_api(make_api)  # workers run with GEMINI_TIMEOUT_S=3
    fake_gemini.push(fg.slow(6), fg.ok())
    status = api.wait(api.submit(drawing()).json()["jobId"], timeout=60)
    assert status["status"] == "completed", status
    assert status["attempts"] == 2


def test_local_engine_when_asked_even_with_a_key(make_api, workers, fake_gemini):
    api = gemini_api(make_api)
    before = len(fake_gemini.requests)
    status = api.wait(api.submit(drawing(), engine="local").json()["jobId"])
    assert status["status"] == "completed" and status["result"]["engine"] == "local"
    assert len(fake_gemini.requests) == before
