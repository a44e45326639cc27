"""The provider's quota across the fleet (`tasks/quota.py`): a real worker service, the fake Gemini
refusing calls beyond N per window with 429 + RetryInfo, as Gemini's per-project quota does.

The learning of the limit from 429s is tested first on its own against the real Redis.
The window is 3 s instead of a minute (`INKQ_GEMINI_WINDOW_S`, and the fake's own window) so a
burst that spans several windows takes seconds.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from tasks import quota
from tasks.core import keys
from tasks.core import settings as worker_settings
from tasks.core.settings import DEFAULT_GEMINI_MODEL
from tests import fakegemini as fg
from tests.servers import Stack, free_port, wait_until

WINDOW_S = 3


def configure(monkeypatch, **given) -> None:
    """This process's worker settings with `given` changed, until the test ends."""
    monkeypatch.setattr(worker_settings, "_current", replace(worker_settings.current(), **given))


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


def test_a_429_teaches_the_fleet_the_calls_taken_in_the_window(redis, monkeypatch):
    """N calls taken, then a 429: the learned limit is N, and the next call past N in a window waits
    for the window's oldest call to leave it (plus the margin); every key it wrote expires."""
    configure(monkeypatch, gemini_window_s=2, gemini_max_rpm=0)
    model, n = f"m-{uuid.uuid4().hex}", 4
    for _ in range(n):
        quota.taken(redis, model, time.time())
    assert quota.learned(redis, model) == 0, "calls taken alone teach nothing"
    quota.rate_limited(redis, model, 0.01)
    assert quota.learned(redis, model) == n
    assert 0 < redis.pttl(keys.gemini_learned_key(model)) <= quota.LEARNED_TTL_WINDOWS * 2000
    time.sleep(0.05)  # the hold
    waits = [quota.before_call(redis, model) for _ in range(n)]
    assert max(waits) < 0.5, waits
    waited = quota.before_call(redis, model)
    assert 2.0 <= waited < 2.0 + quota.MARGIN_S[1] + quota.JITTER_S + 1, waited
    configure(monkeypatch, gemini_max_rpm=3)
    assert quota.budget(redis, model) == 3, "a configured budget below the learned limit wins"
    configure(monkeypatch, gemini_max_rpm=100)
    assert quota.budget(redis, model) == n, "the learned limit caps a configured budget above it"
    _keys_expire(redis, model)


def test_the_learned_limit_rises_during_the_burst_and_falls_when_paced_calls_are_refused(redis, monkeypatch):
    """A 429 overtakes accepted calls still in flight: within a window of the first 429 their answers
    raise the limit. Later, paced at it and still refused, each 429 takes one off (never below 1)."""
    configure(monkeypatch, gemini_window_s=1)
    model = f"m-{uuid.uuid4().hex}"
    sent = time.time()
    quota.taken(redis, model, sent)
    quota.rate_limited(redis, model, 0.01)
    assert quota.learned(redis, model) == 1
    for _ in range(4):  # the burst's other accepted calls, answered after the 429
        quota.taken(redis, model, sent)
    quota.rate_limited(redis, model, 0.01)  # another 429 of the same burst keeps the larger value
    assert quota.learned(redis, model) == 5
    time.sleep(1.1)
    quota.taken(redis, model, time.time())
    quota.taken(redis, model, time.time())
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
    quota.taken(redis, model, time.time())
    quota.rate_limited(redis, model, 0.01, learn=False)
    assert quota.learned(redis, model) == 0
    assert redis.exists(keys.gemini_hold_key(model))


def test_calls_the_provider_refused_for_their_input_count_as_taken(tmp_path, gemini):
    """Bob's 8 calls are refused with 400 (an input the provider cannot process) but
    count against the provider's 8 per window; Alice's 4 calls then meet 429s. The fleet learns that the
    provider took 8 calls in the window, not 1, and Alice's jobs end in about one window, not four."""
    window = 4
    gemini.limit(8, window)
    stack = Stack(tmp_path, gemini.url, MAX_INFLIGHT_PER_USER=1000)
    try:
        stack.workers(stencil=1, ia_gen=8, INKQ_GEMINI_WINDOW_S=str(window))
        gemini.push(*[fg.error(400, message="Unable to process input image.")] * 8)
        bob = [stack.api.post("/generate", json={"operation": "ia-gen", "prompt": f"corrupt {i}"},
                              token="tok-bob").json()["jobId"] for i in range(8)]
        assert {b["status"] for b in stack.wait_all(bob, timeout=30, token="tok-bob").values()} == {"failed"}
        started = time.monotonic()
        final = _burst(stack, 4)
        took = time.monotonic() - started
        learned = quota.learned(stack.redis, DEFAULT_GEMINI_MODEL)
    finally:
        stack.close()
    assert {body["status"] for body in final.values()} == {"completed"}, final
    print(f"after 8 refused inputs: learned {learned} per {window} s, Alice's 4 jobs took {took:.1f} s")
    assert learned >= 8, learned
    assert took < 2.5 * window, took


@pytest.mark.parametrize("reply, expected", [
    (fg.error(400, message="Unable to process input image."), True),
    (fg.error(500), True),
    (fg.finish("IMAGE_SAFETY"), True),
    (fg.slow(3), True),  # sent, then the answer came too late
    (fg.disconnect(), True),  # sent, then the connection was lost without an answer
    (fg.error(429, retry_delay="1s", quota_id=fg.PER_MINUTE_QUOTA), False),
    (None, False),  # nobody listens: never sent
])
def test_every_call_that_reached_the_provider_counts_as_taken_except_a_429(gemini, reply, expected):
    """`tasks.gemini.taken` on the exceptions the real google-genai client raises against the fake."""
    from tasks import gemini as provider
    from tasks.core.errors import JobError
    from tasks.core.settings import WorkerSettings

    url = gemini.url if reply is not None else f"http://127.0.0.1:{free_port()}"
    if reply is not None:
        gemini.push(reply)
    settings = WorkerSettings(gemini_api_key="test-key", gemini_base_url=url, gemini_timeout_s=1.0)
    with pytest.raises(JobError) as caught:
        provider.generate_image(settings, "a lotus")
    cause = caught.value.__cause__
    assert provider.taken(cause) is expected, (type(cause), cause)


def _places(redis, model: str, calls: list[tuple[str, int]], record: list[str]) -> list[threading.Thread]:
    def call(user: str) -> None:
        quota.before_call(redis, model, user)
        record.append(user)

    threads = [threading.Thread(target=call, args=(user,), daemon=True) for user, n in calls for _ in range(n)]
    for thread in threads:
        thread.start()
    return threads


def test_a_free_place_goes_to_the_waiting_user_served_least_recently(redis, monkeypatch):
    """One place per window. Bob has 4 calls waiting when Alice's one call arrives: the next place is
    Alice's, not whichever of the 5 waiting calls wakes first (4 in 5 Bob's)."""
    configure(monkeypatch, gemini_window_s=1, gemini_max_rpm=1)
    model, record = f"m-{uuid.uuid4().hex}", []
    bob = _places(redis, model, [("bob", 4)], record)
    wait_until(lambda: record and redis.zcard(keys.gemini_waiting_key(model)) == 3, timeout=5,
               what="Bob's calls to wait")
    alice = _places(redis, model, [("alice", 1)], record)
    alice[0].join(timeout=10)
    assert record[:2] == ["bob", "alice"], record
    configure(monkeypatch, gemini_max_rpm=100)  # let Bob's other calls go
    for thread in bob:
        thread.join(timeout=10)
    assert sorted(record) == ["alice"] + ["bob"] * 4
    assert redis.zcard(keys.gemini_waiting_key(model)) == 0
    _keys_expire(redis, model)


def test_a_waiting_call_whose_process_died_stops_holding_the_turn(redis, redis_url, monkeypatch):
    """Alice's work-horse is killed while its call waits for a place: Bob's next call is passed over for it
    at most WAITER_STALE_S past the time it was due, not for ever."""
    configure(monkeypatch, gemini_window_s=1, gemini_max_rpm=1)
    monkeypatch.setenv("INKQ_GEMINI_WINDOW_S", "1")  # for Alice's work-horse, a process of its own
    monkeypatch.setenv("GEMINI_MAX_RPM", "1")
    monkeypatch.setattr(quota, "WAITER_STALE_S", 1.0)
    model = f"m-{uuid.uuid4().hex}"
    quota.before_call(redis, model, "bob")
    code = ("import sys, redis; from tasks import quota; "
            "quota.before_call(redis.Redis.from_url(sys.argv[1]), sys.argv[2], 'alice')")
    horse = subprocess.Popen([sys.executable, "-c", code, redis_url, model], env={**os.environ})
    try:
        wait_until(lambda: redis.zcard(keys.gemini_waiting_key(model)) == 1, timeout=10, what="Alice's call to wait")
    finally:
        horse.kill()
        horse.wait(5)
    record: list[str] = []
    started = time.monotonic()
    [bob] = _places(redis, model, [("bob", 1)], record)
    bob.join(timeout=1 + quota.MARGIN_S[0] + quota.JITTER_S + quota.WAITER_STALE_S + quota.TURN_GRACE_S + 1)
    assert record == ["bob"], f"Bob's call still waits after {time.monotonic() - started:.1f} s"


def test_one_users_jobs_do_not_take_the_fleets_provider_budget(tmp_path, gemini):
    """A real worker service with 12 ia-gen slots and a budget of 1 call per 2 s. Bob has his 10 jobs
    (MAX_INFLIGHT_PER_USER) running, all waiting for the budget, when Alice submits one: her call takes
    the next free place. Her second job, submitted once the first is done, takes a place within two
    (Bob was served less recently than she was): the users take turns."""
    window = 2
    stack = Stack(tmp_path, gemini.url)
    try:
        stack.workers(stencil=1, ia_gen=12, GEMINI_MAX_RPM="1", INKQ_GEMINI_WINDOW_S=str(window))
        bob = [stack.api.post("/generate", json={"operation": "ia-gen", "prompt": f"bob {i}"},
                              token="tok-bob").json()["jobId"] for i in range(10)]
        wait_until(lambda: all(stack.api.get(f"/status/{j}", token="tok-bob").json()["status"] != "waiting"
                               for j in bob), timeout=20, what="Bob's 10 jobs to start")
        for round_, within in ((1, 1), (2, 2)):
            seen = len(gemini.requests)
            wait_until(lambda: len(gemini.requests) > seen, timeout=10, what="a place to be taken")
            seen = len(gemini.requests)
            response = stack.api.post("/generate", json={"operation": "ia-gen", "prompt": f"alice {round_}"})
            assert stack.wait_all([response.json()["jobId"]], timeout=30)
            after = [r.text.rsplit("Description: ", 1)[-1].split()[0] for r in gemini.requests[seen:]]
            assert "alice" in after[:within], (round_, after)
        with ThreadPoolExecutor(len(bob)) as pool:  # stopped at once, not one after the other
            list(pool.map(lambda job_id: stack.api.delete(f"/jobs/{job_id}", token="tok-bob"), bob))
    finally:
        stack.close()
