"""The provider's quota across the fleet (`tasks/quota.py`): a real worker service, the fake Gemini
refusing calls beyond N per window with 429 + RetryInfo, as Gemini's per-project quota does.

The window is 3 s instead of a minute (`INKQ_GEMINI_WINDOW_S`, and the fake's own window) so a
burst that spans several windows takes seconds.
"""
from __future__ import annotations

import pytest

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
        stack.workers(stencil=1, ia_gen=10)
        final = _burst(stack, 20)
    finally:
        stack.close()
    assert {body["status"] for body in final.values()} == {"completed"}, final
    calls = len(gemini.requests)
    print(f"no budget: 20 jobs, {calls} calls, {gemini.rate_limited} refused with 429")
    assert gemini.rate_limited <= 0.5 * 20, (gemini.rate_limited, calls)
