"""Redis stays bounded: every key a user can cause to exist expires or is bounded.

Each path a user can drive runs against a Redis of its own, with real workers and the API over HTTP,
then every key is scanned. The keys that may live without a TTL are the system's own, listed in
`LONG_LIVED` (queues, registries, worker and metrics keys, and one balance per user); registries
must hold only entries that will be cleaned.
"""
from __future__ import annotations

import re
import time

import pytest

from tests import fakegemini as fg
from tests.conftest import drawing, webhook_receiver
from tests.servers import Stack, wait_until

QUEUE = r"(stencil-generation|enhance|ia-gen|color-match|webhooks)"
LONG_LIVED = [re.compile(p) for p in (
    r"rq:queues", rf"rq:queue:{QUEUE}", r"rq:workers", rf"rq:workers:{QUEUE}", r"rq:worker:.+",
    rf"rq:(wip|finished|failed|canceled|scheduled|deferred):{QUEUE}",  # registries: checked below
    rf"inkq:workers:{QUEUE}", r"inkq:metrics", r"inkq:recovery:stats",
    rf"inkq:fair:{QUEUE}(:state|:runs|:users|:waiting)?",  # the fair order: checked below
    r"inkq:credits:[^:]+",  # a user's balance: one per user, never per job
)]
REGISTRY = re.compile(rf"rq:(wip|finished|failed|canceled|scheduled|deferred):{QUEUE}")


@pytest.fixture
def stack(tmp_path):
    with fg.FakeGemini() as gemini:
        made = Stack(tmp_path, gemini.url, CREDITS_ENABLED="true", CREDITS_INITIAL=100,
                     MAX_INFLIGHT_PER_USER=100)
        made.gemini = gemini
        try:
            yield made
        finally:
            made.close()


def test_every_key_a_user_causes_expires_or_is_bounded(stack):
    api, gemini, image = stack.api, stack.gemini, drawing()
    stack.workers(stencil=1, ia_gen=1)
    ids = []
    with webhook_receiver() as (hook, calls):
        for n in range(3):  # submit and complete (once with a start deadline), with a webhook, idempotently (twice)
            ids.append(api.submit(image, engine="local", **({"maxWaitS": 600} if n == 0 else {})).json()["jobId"])
        ids.append(api.submit(image, engine="local", webhookUrl=hook).json()["jobId"])
        for _ in range(2):
            ids.append(api.post("/generate", headers={"Idempotency-Key": "k1"},
                                json={"operation": "color-match", "image": __import__("base64").b64encode(image).decode()})
                       .json()["jobId"])
        gemini.push(fg.blocked("SAFETY"))  # submit and fail
        ids.append(api.submit(image, engine="gemini", webhookUrl=hook).json()["jobId"])
        stack.wait_all(ids, timeout=60)
        gemini.push(fg.slow(30), fg.slow(30))  # cancel while active, and while waiting
        active = api.post("/generate", json={"operation": "ia-gen", "prompt": "a", "webhookUrl": hook}).json()["jobId"]
        waiting = [api.post("/generate", json={"operation": "ia-gen", "prompt": "b"}).json()["jobId"] for _ in range(3)]
        wait_until(lambda: api.get(f"/status/{active}").json()["status"] == "active", timeout=30)
        expiring = api.post("/generate", json={"operation": "ia-gen", "prompt": "c", "maxWaitS": 1}).json()["jobId"]
        wait_until(lambda: stack.redis.hget(f"rq:job:{expiring}", "status") == b"canceled", timeout=30,
                   what="the start deadline's end")  # not started within 1 s: its slot is busy
        ids.append(expiring)
        for job_id in waiting + [active]:
            assert api.delete(f"/jobs/{job_id}").status_code == 200
        ids += waiting + [active]
        assert api.get("/jobs").status_code == 200 and api.get("/credits").status_code == 200
        final = stack.wait_all(ids, timeout=60)
        wait_until(lambda: calls.qsize() >= 3, timeout=30, what="three webhook deliveries")
        wait_until(lambda: all(stack.api.get(f"/status/{i}").json().get("webhook", {}).get("state") in
                               (None, "delivered") for i in ids), timeout=30, what="webhook states")
    assert sorted(body["status"] for body in final.values()) == ["canceled"] * 5 + ["completed"] * 5 + ["failed"]
    time.sleep(1.5)  # let the workers' callbacks and a recovery sweep finish

    r = stack.redis
    forever = []
    for key in (k.decode() for k in r.scan_iter(count=1000)):
        if r.ttl(key) == -1 and not any(p.fullmatch(key) for p in LONG_LIVED):
            forever.append(key)
    assert not forever, f"keys a user caused that never expire: {sorted(forever)}"

    # the fair order holds waiting jobs only, and keeps a bounded list of run times per queue
    from tasks.core import fairness, keys
    from tasks.core.queues import QUEUE_NAMES
    for queue in QUEUE_NAMES:
        assert r.zcard(keys.fair_key(queue)) == 0 and r.hlen(keys.fair_waiting_key(queue)) == 0, queue
        assert r.zcard(keys.fair_users_key(queue)) == 0 and r.llen(keys.fair_runs_key(queue)) <= fairness.RUNS_KEPT
        assert set(r.hkeys(keys.fair_state_key(queue))) <= {b"v", b"seq", b"run_s"}

    now = time.time()
    for key in (k.decode() for k in r.scan_iter(count=1000)):
        if REGISTRY.fullmatch(key):
            for member, score in r.zrange(key, 0, -1, withscores=True):
                job_id = member.decode().split(":")[0]
                # an entry is cleaned at its score (its job's expiry); a started one while it runs
                assert score > now, (key, member, score)
                assert r.ttl(f"rq:job:{job_id}") > 0 or key.startswith("rq:wip"), (key, member)
