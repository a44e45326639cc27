"""The provider's quota across the fleet (`tasks/quota.py`): a real worker service, the fake Gemini
refusing calls beyond N per window with 429 + RetryInfo, as Gemini's per-project quota does.

The learning of the limit from 429s is tested first on its own against the real Redis.
The window is 3 s instead of a minute (`INKQ_GEMINI_WINDOW_S`, and the fake's own window) so a
burst that spans several windows takes seconds.
"""
from __future__ import annotations

import time
import uuid

import pytest

from tasks import quota
from tests import fakegemini as fg
from tests.servers import Stack

WINDOW_S = 3


@pytest.fixture
def gemini():
    with fg.FakeGemini() as fake:
        yield fake


def _burst(stack: Stack, n: int) -> dict[str, dict]:
    ids = []
    for i in range(n):
        response = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": f"a lotus {i}"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["jobId"])
    return stack.wait_all(ids, timeout=90)


def test_gemini_max_rpm_keeps_the_fleet_under_the_providers_limit(tmp_path, gemini):
    """Two worker services, GEMINI_MAX_RPM a little below the provider's limit (8 of 10: in a 3 s window
    a loaded box delays some calls by a few hundred ms between the budget and the provider, which a
    one-minute window would not notice): the burst completes, no job fails, at most 5% of calls refused."""
    gemini.limit(10, WINDOW_S)
    stack = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    try:
        for _ in range(2):
            stack.workers(stencil=1, ia_gen=8, GEMINI_MAX_RPM="8", INKQ_GEMINI_WINDOW_S=str(WINDOW_S))
        final = _burst(stack, 30)
    finally:
        stack.close()
    assert {body["status"] for body in final.values()} == {"completed"}, final
    calls = len(gemini.requests)
    print(f"quota: 30 jobs, {calls} calls, {gemini.rate_limited} refused with 429")
    assert gemini.rate_limited <= 0.05 * calls, (gemini.rate_limited, calls)


def test_without_a_budget_a_429_holds_back_every_worker(tmp_path, gemini):
    """No GEMINI_MAX_RPM: the first 429 holds every worker's calls for its RetryInfo delay, so the
    burst completes and the refusals stay few, instead of every waiting job calling into the limit."""
    gemini.limit(5, WINDOW_S)
    stack = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    try:
        stack.workers(stencil=1, ia_gen=10, INKQ_GEMINI_WINDOW_S=str(WINDOW_S))
        final = _burst(stack, 20)
    finally:
        stack.close()
    assert {body["status"] for body in final.values()} == {"completed"}, final
    calls = len(gemini.requests)
    print(f"no budget: 20 jobs, {calls} calls, {gemini.rate_limited} refused with 429")
    assert gemini.rate_limited <= 0.5 * 20, (gemini.rate_limited, calls)


def _keys_expire(redis, model: str) -> None:
    keys = [k for k in redis.scan_iter(match="*") if model.encode() in k]
    assert keys
    assert all(redis.pttl(k) > 0 for k in keys), {k: redis.pttl(k) for k in keys}


def test_a_429_teaches_the_fleet_the_calls_answered_in_the_window(redis, redis_url, monkeypatch):
    """N calls answered, then a 429: the learned limit is N, and the next call past N in a window waits
    for the window's oldest call to leave it (plus the margin); every key it wrote expires."""
    monkeypatch.setenv("INKQ_GEMINI_WINDOW_S", "2")
    monkeypatch.delenv("GEMINI_MAX_RPM", raising=False)
    model, n = f"m-{uuid.uuid4().hex}", 4
    for _ in range(n):
        quota.answered(redis, model, time.time())
    assert quota.learned(redis, model) == 0, "answers alone teach nothing"
    quota.rate_limited(redis, model, 0.01)
    assert quota.learned(redis, model) == n
    assert 0 < redis.pttl(quota.learned_key(model)) <= quota.LEARNED_TTL_WINDOWS * 2000
    time.sleep(0.05)  # the hold
    waits = [quota.before_call(redis, redis_url, model) for _ in range(n)]
    assert max(waits) < 0.5, waits
    waited = quota.before_call(redis, redis_url, model)
    assert 2.0 <= waited < 2.0 + quota.MARGIN_S[1] + quota.JITTER_S + 1, waited
    monkeypatch.setenv("GEMINI_MAX_RPM", "3")
    assert quota.budget(redis, model) == 3, "a configured budget below the learned limit wins"
    monkeypatch.setenv("GEMINI_MAX_RPM", "100")
    assert quota.budget(redis, model) == n, "the learned limit caps a configured budget above it"
    _keys_expire(redis, model)


def test_the_learned_limit_rises_during_the_burst_and_falls_when_paced_calls_are_refused(redis, monkeypatch):
    """A 429 overtakes accepted calls still in flight: within a window of the first 429 their answers
    raise the limit. Later, paced at it and still refused, each 429 takes one off (never below 1)."""
    monkeypatch.setenv("INKQ_GEMINI_WINDOW_S", "1")
    model = f"m-{uuid.uuid4().hex}"
    sent = time.time()
    quota.answered(redis, model, sent)
    quota.rate_limited(redis, model, 0.01)
    assert quota.learned(redis, model) == 1
    for _ in range(4):  # the burst's other accepted calls, answered after the 429
        quota.answered(redis, model, sent)
    quota.rate_limited(redis, model, 0.01)  # another 429 of the same burst keeps the larger value
    assert quota.learned(redis, model) == 5
    time.sleep(1.1)
    quota.answered(redis, model, time.time())
    quota.answered(redis, model, time.time())
    assert quota.learned(redis, model) == 5, "past the burst, answers do not move it"
    quota.rate_limited(redis, model, 0.01)
    quota.rate_limited(redis, model, 0.01)
    assert quota.learned(redis, model) == 3
    for _ in range(5):
        quota.rate_limited(redis, model, 0.01)
    assert quota.learned(redis, model) == 1
    _keys_expire(redis, model)


def test_only_a_429_naming_a_per_minute_quota_teaches(redis):
    """An overload 429, or a daily quota's, holds the calls but teaches no pace; a per-minute
    QuotaFailure (what the fake's limit, like Gemini, sends) does."""
    from google.genai import errors as genai_errors

    from tasks.gemini import per_minute_quota

    def api_error(reply) -> genai_errors.APIError:
        return genai_errors.APIError(reply.status, reply.body)

    assert per_minute_quota(api_error(fg.error(429, retry_delay="2s", quota_id=fg.PER_MINUTE_QUOTA)))
    assert not per_minute_quota(api_error(fg.error(429, retry_delay="2s")))
    assert not per_minute_quota(api_error(fg.error(429, quota_id="GenerateRequestsPerDayPerProjectPerModel")))
    model = f"m-{uuid.uuid4().hex}"
    quota.answered(redis, model, time.time())
    quota.rate_limited(redis, model, 0.01, learn=False)
    assert quota.learned(redis, model) == 0
    assert redis.exists(quota.hold_key(model))
