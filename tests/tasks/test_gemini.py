"""The Gemini provider against the fake Gemini server, through the real google-genai client."""
from __future__ import annotations

import base64
import socket
import time

import pytest

from tasks import gemini
from tasks.core.errors import FinalError, TransientError
from tasks.core.settings import WorkerSettings
from tests.fakegemini import (
    FakeGemini,
    blocked,
    disconnect,
    error,
    Reply,
    finish,
    ok,
    raw,
    sample_png,
    serve,
    slow,
    text_only,
)

KEY = "test-key"


@pytest.fixture
def fake():
    yield from serve()


def settings_for(fake: FakeGemini, **overrides) -> WorkerSettings:
    values = dict(gemini_api_key=KEY, gemini_base_url=fake.url, gemini_timeout_s=5.0)
    values.update(overrides)
    return WorkerSettings(**values)


def fail(fake: FakeGemini, *replies, **overrides) -> Exception:
    fake.push(*replies)
    with pytest.raises((TransientError, FinalError)) as caught:
        gemini.generate_image(settings_for(fake, **overrides), "draw a rose")
    return caught.value


def test_success_returns_the_image_and_sends_prompt_image_and_model(fake):
    answer = sample_png(48)
    photo = sample_png(80)
    fake.push(ok(answer, text="Here is your stencil."))

    result = gemini.generate_image(settings_for(fake), "make a stencil", photo, "image/png")

    assert result == answer
    [request] = fake.requests
    assert request.model == WorkerSettings().gemini_model
    assert request.path.endswith(f"/models/{request.model}:generateContent")
    assert request.api_key == KEY
    assert "make a stencil" in request.text
    assert request.images == [photo]
    assert request.mime_types == ["image/png"]
    assert request.json["generationConfig"]["responseModalities"] == ["IMAGE", "TEXT"]


def test_thought_images_are_skipped(fake):
    draft, final = sample_png(16), sample_png(32)
    parts = [
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(draft).decode()}, "thought": True},
        {"text": "Done."},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(final).decode()}},
    ]
    fake.push(Reply(body={"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}]}))
    assert gemini.generate_image(settings_for(fake), "draw") == final


def test_image_type_is_sniffed_when_not_given(fake):
    jpeg = b"\xff\xd8\xff\xe0" + b"\0" * 32
    gemini.generate_image(settings_for(fake), "enhance", jpeg)
    assert fake.requests[0].images == [jpeg]
    assert fake.requests[0].mime_types == ["image/jpeg"]


def test_429_with_retry_info_is_transient_with_retry_after_and_not_retried_by_the_sdk(fake):
    exc = fail(fake, error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.", retry_delay="7s"))
    assert isinstance(exc, TransientError)
    assert exc.retry_after == 7
    assert "rate" in exc.message
    assert len(fake.requests) == 1


def test_fractional_retry_delay(fake):
    exc = fail(fake, error(429, retry_delay="1.5s"))
    assert isinstance(exc, TransientError) and exc.retry_after == 1.5


def test_retry_after_header_is_used_without_retry_info(fake):
    exc = fail(fake, error(503, retry_after="3"))
    assert isinstance(exc, TransientError) and exc.retry_after == 3


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_server_errors_are_transient(fake, code):
    exc = fail(fake, error(code))
    assert isinstance(exc, TransientError)
    assert exc.retry_after is None
    assert len(fake.requests) == 1


def test_html_error_page_is_transient_and_not_shown(fake):
    exc = fail(fake, raw(502, b"<html><body>Bad gateway</body></html>"))
    assert isinstance(exc, TransientError)
    assert "<" not in exc.message and "html" not in exc.message.lower()


def test_unreadable_answer_is_transient(fake):
    exc = fail(fake, raw(200, b"not json", "text/plain"))
    assert isinstance(exc, TransientError) and "could not be read" in exc.message


def test_blocked_prompt_is_final_and_mentions_safety(fake):
    exc = fail(fake, blocked("PROHIBITED_CONTENT"))
    assert isinstance(exc, FinalError)
    assert "safety" in exc.message and "PROHIBITED_CONTENT" in exc.message


@pytest.mark.parametrize("reason", ["IMAGE_SAFETY", "SAFETY", "IMAGE_PROHIBITED_CONTENT", "RECITATION"])
def test_safety_finish_reason_is_final(fake, reason):
    exc = fail(fake, finish(reason))
    assert isinstance(exc, FinalError)
    assert "safety" in exc.message and reason in exc.message


def test_text_only_answer_is_final_no_image_with_excerpt(fake):
    exc = fail(fake, text_only("I can only describe roses,\n not draw them."))
    assert isinstance(exc, FinalError)
    assert "no image" in exc.message
    assert "I can only describe roses, not draw them." in exc.message


def test_no_image_finish_reason_is_final(fake):
    exc = fail(fake, finish("NO_IMAGE"))
    assert isinstance(exc, FinalError) and "no image" in exc.message and "NO_IMAGE" in exc.message


def test_bad_request_is_final(fake):
    exc = fail(fake, error(400, "INVALID_ARGUMENT", "Unable to process input image."))
    assert isinstance(exc, FinalError)
    assert exc.message == (
        "The image provider rejected the request (HTTP 400 INVALID_ARGUMENT: Unable to process input image)."
    )


def test_forbidden_is_final_and_never_shows_the_key(fake):
    exc = fail(fake, error(403, "PERMISSION_DENIED", f"API key {KEY} was denied."))
    assert isinstance(exc, FinalError)
    assert "rejected" in exc.message and "403" in exc.message
    assert KEY not in exc.message and KEY not in str(exc)


def test_wrong_key_is_final(fake):
    fake.api_key = "the-right-key"
    exc = fail(fake)
    assert isinstance(exc, FinalError) and "API key not valid" in exc.message


def test_slow_answer_times_out_as_transient_quickly(fake):
    started = time.monotonic()
    exc = fail(fake, slow(3), gemini_timeout_s=1)
    elapsed = time.monotonic() - started
    assert isinstance(exc, TransientError)
    assert "in time" in exc.message
    assert elapsed < 2.5
    assert len(fake.requests) == 1


def test_dropped_connection_is_transient(fake):
    exc = fail(fake, disconnect())
    assert isinstance(exc, TransientError)


def test_connection_refused_is_transient():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = WorkerSettings(gemini_api_key=KEY, gemini_base_url=f"http://127.0.0.1:{port}", gemini_timeout_s=2)
    with pytest.raises(TransientError) as caught:
        gemini.generate_image(settings, "draw a rose")
    assert caught.value.message == "Could not reach the image provider."


def test_no_key_is_final_and_sends_nothing(fake):
    assert not gemini.available(settings_for(fake, gemini_api_key=""))
    assert gemini.available(settings_for(fake))
    exc = fail(fake, gemini_api_key="")
    assert isinstance(exc, FinalError)
    assert exc.message == gemini.NOT_CONFIGURED
    assert fake.requests == []


@pytest.mark.parametrize("style", ["standard", "fine", "bold"])
def test_stencil_prompts(style):
    prompt = gemini.prompt_for("stencil", style, None)
    assert "stencil" in prompt and "white" in prompt and "No shading" in prompt
    assert gemini.STYLES[style] in prompt


def test_topographic_and_default_style():
    assert "contour" in gemini.prompt_for("stencil", "topographic", None)
    assert gemini.prompt_for("stencil", None, None) == gemini.prompt_for("stencil", "standard", None)


def test_user_prompt_is_appended():
    prompt = gemini.prompt_for("enhance", None, "  keep the  lettering ")
    assert "twice" in prompt
    assert prompt.endswith("Additional instructions from the user: keep the lettering")


def test_ia_gen_uses_the_description():
    prompt = gemini.prompt_for("ia-gen", None, "a koi fish around a lotus")
    assert "new" in prompt and "a koi fish around a lotus" in prompt
    with pytest.raises(FinalError):
        gemini.prompt_for("ia-gen", None, "  ")


def test_unknown_operation_and_style():
    with pytest.raises(ValueError):
        gemini.prompt_for("upscale", None, None)
    with pytest.raises(FinalError):
        gemini.prompt_for("stencil", "watercolour", None)


def test_answers_are_read_a_few_at_a_time_and_every_call_gets_its_own(fake):
    """100 calls in flight got their ~1.6 MB answers together and read them all at once (the worker's PSS).
    The gate lets ANSWERS_AT_ONCE threads read and decode; the others wait their turn, and all finish."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.fakegemini import big_png

    answers = [big_png(200_000, seed=i) for i in range(12)]
    fake.push(*(slow(0.3, ok(a)) for a in answers))
    gate = gemini.answer_gate
    gate.peak = 0
    settings = settings_for(fake)

    def one(_):
        with gate.scope():  # as tasks.jobs does: the turn lasts until the image is checked
            data = gemini.generate_image(settings, "draw")
            time.sleep(0.05)
            return data

    with ThreadPoolExecutor(len(answers)) as pool:
        got = list(pool.map(one, range(len(answers))))
    assert sorted(got) == sorted(answers)
    assert 2 <= gate.peak <= gemini.ANSWERS_AT_ONCE
    assert gate.in_use == 0


def test_a_call_outside_a_scope_takes_no_turn_and_a_failed_one_gives_its_turn_back(fake):
    gate = gemini.answer_gate
    gate.enter()  # an httpx hook outside generate_image
    assert gate.in_use == 0
    for _ in range(gemini.ANSWERS_AT_ONCE + 1):
        fail(fake, error(500))
    assert gate.in_use == 0
    fake.push(ok(sample_png(32)))
    assert gemini.generate_image(settings_for(fake), "draw") == sample_png(32)


def test_a_turn_held_by_a_thread_that_ended_is_taken_back(fake):
    """A slot thread ended by the supervisor (an asynchronous exception) may never give its turn back;
    the turns of threads that have ended are reclaimed once the gate is full."""
    import threading

    gate = gemini.AnswerGate(2)
    both_in = threading.Barrier(2)

    def leaks():
        gate._local.depth = 1  # inside a scope whose clean-up never runs
        gate.enter()
        both_in.wait()  # alive together, so the two threads have two ids (an ended thread's id is reused)
    threads = [threading.Thread(target=leaks) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gate.in_use == 2
    started = time.monotonic()
    with gate.scope():
        gate.enter()
        assert gate.in_use == 1  # both dead threads' turns taken back, this one's given
    assert time.monotonic() - started < 1 and gate.in_use == 0


def test_the_client_is_built_before_the_first_call(fake):
    """`gemini.warm` builds the process's client (its TLS contexts) ahead of the first call, and the
    worker service's supervisor does it before its forks (`tasks.runtime.worker.preload`); with no key, nothing."""
    import os
    import subprocess
    import sys

    env = {"GEMINI_API_KEY": KEY, "GEMINI_BASE_URL": fake.url, "GEMINI_TIMEOUT_S": "7.5"}
    settings = WorkerSettings.from_env(env)
    known = set(gemini._clients)
    gemini.warm(WorkerSettings.from_env({"GEMINI_API_KEY": "  "}))
    assert set(gemini._clients) == known
    gemini.warm(settings)
    [built] = [client for key, client in gemini._clients.items() if key not in known]
    assert gemini.client_for(settings) is built
    fake.push(ok(sample_png(40)))
    assert gemini.generate_image(settings, "a rose") == sample_png(40)
    assert gemini.client_for(settings) is built

    # ... and completes google-genai's request and answer models there (pydantic builds them on first use)
    check = ("import tasks.runtime.worker; from tasks import gemini; from google.genai import types; "
             "print(sorted((k[1], k[2]) for k in gemini._clients)); "
             "print([m.__pydantic_complete__ for m in (types.Part, types.GenerateContentConfig, "
             "types.GenerateContentResponse)])")
    out = subprocess.run([sys.executable, "-c", check], env={**os.environ, **env, "LOG_LEVEL": "WARNING"},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split("\n")[:2] == [repr([(fake.url, 7.5)]), "[True, True, True]"], out
