"""Admin surfaces: queue statistics, rq-dashboard behind admin credentials; auth through HTTP."""
from __future__ import annotations

import base64
import time

import jwt
import pytest
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from tests import fakegemini as fg
from tests.conftest import ADMIN_TOKEN, drawing
from tests.servers import RedisServer, Stack, wait_until

QUEUES = ["stencil-generation", "enhance", "ia-gen", "color-match"]


def basic(password: str, user: str = "ops") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_queue_stats(api, workers):
    api.wait(api.submit(drawing()).json()["jobId"])
    response = api.get("/admin/queue-stats", token=ADMIN_TOKEN)
    assert response.status_code == 200
    stats = response.json()
    assert sorted(stats) == sorted(QUEUES)
    for row in stats.values():
        assert set(row) == {"waiting", "active", "completed", "failed", "scheduled", "workers", "concurrency",
                            "runS", "users", "oldestWaitingS", "liveWorkers", "totals", "runTime", "queueWait"}
    assert stats["stencil-generation"]["completed"] >= 1
    assert stats["stencil-generation"]["runS"] > 0 and stats["stencil-generation"]["users"] >= 0
    # one process per queue (its CONCURRENCY_STENCIL=2 as threads); one that an earlier test SIGKILLed is
    # counted until the recovery sweep forgets it, a few seconds later
    assert stats["stencil-generation"]["workers"] >= 1
    assert api.get("/admin/queue-stats", token="tok-alice").status_code == 403
    unauthenticated = api.get("/admin/queue-stats", token=None)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "unauthenticated"


def concurrency(api) -> dict:
    return {name: row["concurrency"] for name, row in api.get("/admin/queue-stats", token=ADMIN_TOKEN).json().items()}


def test_queue_stats_report_the_concurrency_the_worker_services_run(tmp_path, fake_gemini):
    """A worker service given CONCURRENCY_* that the API is not given: /admin/queue-stats reports the
    service's, not the API's defaults (5, 3, 3, 10); 0 once no worker service runs the queue."""
    stack = Stack(tmp_path, fake_gemini.url)
    try:
        assert concurrency(stack.api) == {name: 0 for name in QUEUES}
        service = stack.workers(stencil=7, ia_gen=2, CONCURRENCY_COLOR_MATCH="4")
        ran = {"stencil-generation": 7, "enhance": 1, "ia-gen": 2, "color-match": 4}
        wait_until(lambda: concurrency(stack.api) == ran, timeout=10, what=f"concurrency {ran}")
        assert service.stop() == 0
        assert concurrency(stack.api) == {name: 0 for name in QUEUES}
    finally:
        stack.close()


def test_queue_stats_sum_the_slots_live_workers_publish(make_api):
    """Per queue, the slots of its live workers, summed: a worker whose liveness lapsed, or one that
    publishes none, adds nothing; the API's own CONCURRENCY_* plays no part."""
    from tasks.core import metrics
    from tasks.core.keys import LIVENESS_TTL_MS, alive_key, workers_key

    server = RedisServer()
    try:
        import redis as redis_lib
        client = redis_lib.Redis.from_url(server.url)
        live = {"a": ("stencil-generation", 4), "b": ("stencil-generation", 3), "c": ("color-match", None)}
        with client.pipeline() as pipe:
            for worker, (queue, slots) in {**live, "dead": ("enhance", 9)}.items():
                pipe.sadd(workers_key(queue), worker)
                if slots is not None:
                    metrics.publish_slots(pipe, worker, slots)
                if worker in live:
                    pipe.set(alive_key(worker), 1, px=LIVENESS_TTL_MS)
            pipe.execute()
        assert 0 < client.pttl(metrics.slots_key("a")) <= LIVENESS_TTL_MS, "published slots lapse with the worker"
        api = make_api(REDIS_URL=server.url, CONCURRENCY_STENCIL="50", CONCURRENCY_ENHANCE="50")
        stats = api.get("/admin/queue-stats", token=ADMIN_TOKEN).json()
        assert {name: row["concurrency"] for name, row in stats.items()} == {
            "stencil-generation": 7, "enhance": 0, "ia-gen": 0, "color-match": 0}
        assert {name: row["liveWorkers"] for name, row in stats.items()} == {
            "stencil-generation": 2, "enhance": 0, "ia-gen": 0, "color-match": 1}
    finally:
        server.stop()


def test_queue_stats_read_has_no_side_effects(make_api):
    """A stale entry in the started registry stays where it is: reading stats cleans nothing up."""
    server = RedisServer()
    try:
        import redis as redis_lib
        client = redis_lib.Redis.from_url(server.url)
        registry = StartedJobRegistry("enhance", connection=client, serializer=JSONSerializer)
        client.zadd(registry.key, {"stale-job:exec": time.time() - 3600})
        Queue("enhance", connection=client, serializer=JSONSerializer)
        before = {key: client.type(key) for key in client.keys("*")}
        snapshot = client.zrange(registry.key, 0, -1, withscores=True)
        api = make_api(REDIS_URL=server.url)
        stats = api.get("/admin/queue-stats", token=ADMIN_TOKEN).json()
        assert stats["enhance"]["active"] == 1
        assert client.zrange(registry.key, 0, -1, withscores=True) == snapshot
        assert {key: client.type(key) for key in client.keys("*")} == before
    finally:
        server.stop()


def test_dashboard_needs_admin(api, workers):
    page = api.get("/admin/rq/", token=None)
    assert page.status_code == 401 and page.json()["code"] == "unauthenticated"
    assert page.headers["WWW-Authenticate"].startswith("Basic")
    assert api.get("/admin/rq/", token="tok-alice").status_code == 403
    assert api.get("/admin/rq/", token=None, headers=basic("tok-alice")).status_code == 401
    as_admin = api.get("/admin/rq/", token=ADMIN_TOKEN)
    assert as_admin.status_code == 200 and "text/html" in as_admin.headers["Content-Type"]
    browser = api.get("/admin/rq/0/data/queues.json", token=None, headers=basic(ADMIN_TOKEN))
    assert browser.status_code == 200
    names = {q["name"] for q in browser.json()["queues"]}
    assert "stencil-generation" in names
    workers_json = api.get("/admin/rq/0/data/workers.json", token=ADMIN_TOKEN)
    assert workers_json.status_code == 200 and len(workers_json.json()["workers"]) >= 5
    assert api.get("/admin/rq/static/favicon.ico", token=None).status_code == 401


def test_dashboard_job_pages_read_json_jobs(api, workers):
    job_id = api.submit(drawing()).json()["jobId"]
    api.wait(job_id)
    response = api.get(f"/admin/rq/0/data/job/{job_id}.json", token=ADMIN_TOKEN)
    assert response.status_code == 200 and response.json()["id"] == job_id


def test_dashboard_workers_listing_while_a_job_runs(make_api, workers, fake_gemini):
    """The worker running a job names it: the dashboard reads that job with the JSON serializer."""
    api = make_api(GEMINI_API_KEY="test-key")
    fake_gemini.push(fg.slow(2.5))
    job_id = api.submit(operation="ia-gen", prompt="a koi").json()["jobId"]
    wait_until(lambda: fake_gemini.requests, timeout=30, what="the ia-gen job to call the provider")
    response = api.get("/admin/rq/0/data/workers.json", token=ADMIN_TOKEN)
    assert response.status_code == 200, response.text
    running = {w["current_job"]["job_id"]: w["current_job"] for w in response.json()["workers"]
               if w["current_job"] != "idle"}
    assert running[job_id]["call_string"].startswith("tasks.jobs.ia_gen(")
    api.wait(job_id)


@pytest.fixture(scope="module")
def lone_redis():
    """A Redis no worker service serves: the dashboard's actions there (requeue or empty every failed job of
    a queue, delete a job) touch no other test's jobs and race no worker."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/admin/rq/requeue/enhance", "/admin/rq/job/{job}/delete",
                                  "/admin/rq/job/{job}/requeue", "/admin/rq/queue/enhance/failed/empty",
                                  "/admin/rq/queue/enhance/compact"])
def test_dashboard_actions_are_post_only_and_admin_only(make_api, lone_redis, path):
    api = make_api(REDIS_URL=lone_redis.url)
    job_id = api.submit(drawing(), operation="color-match").json()["jobId"]
    assert api.delete(f"/jobs/{job_id}").status_code == 200  # no worker: canceled as it waits
    assert api.get(f"/status/{job_id}").json()["status"] == "canceled"
    path = path.format(job=job_id)
    assert api.get(path, token=ADMIN_TOKEN).status_code == 405
    assert api.post(path, token="tok-alice").status_code == 403
    assert api.post(path, token=None).status_code == 401
    done = api.post(path, token=None, headers={**basic(ADMIN_TOKEN), "Origin": api.url})
    assert done.status_code in (200, 409), done.text  # 409: requeue of a job that has not failed


def test_jwt_users_through_http(make_api, workers):
    secret = "s" * 40
    api = make_api(JWT_SECRET=secret)
    now = int(time.time())
    good = jwt.encode({"sub": "user_clerk_1", "exp": now + 60}, secret, algorithm="HS256")
    expired = jwt.encode({"sub": "user_clerk_1", "exp": now - 120}, secret, algorithm="HS256")
    forged = jwt.encode({"sub": "user_clerk_1", "exp": now + 60}, "x" * 40, algorithm="HS256")
    unsigned = (base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + "." +
                base64.urlsafe_b64encode(f'{{"sub":"user_clerk_1","exp":{now + 60}}}'.encode()).rstrip(b"=").decode()
                + ".")
    job_id = api.submit(drawing(), token=good).json()["jobId"]
    assert api.wait(job_id, token=good)["status"] == "completed"
    for token in (expired, forged, unsigned):
        response = api.get(f"/status/{job_id}", token=token)
        assert response.status_code == 401 and response.json()["code"] == "unauthenticated"
    assert api.get(f"/status/{job_id}", token="tok-alice").status_code == 404
    admin_sub = jwt.encode({"sub": "@admin", "exp": now + 60}, secret, algorithm="HS256")
    assert api.get("/jobs", token=admin_sub).status_code == 401
    named_admin = jwt.encode({"sub": "admin", "exp": now + 60}, secret, algorithm="HS256")
    assert api.get("/admin/queue-stats", token=named_admin).status_code == 403


def test_api_refuses_to_start_without_auth(redis_url):
    from api import ConfigError, create_app

    with pytest.raises(ConfigError):
        create_app({"REDIS_URL": redis_url, "API_KEYS": "", "JWT_SECRET": "", "JWT_JWKS_URL": "",
                    "ADMIN_TOKEN": "", "SECRET_KEY": "k" * 32, "INKQ_DEV": ""})
    with pytest.raises(ConfigError):
        create_app({"REDIS_URL": redis_url, "API_KEYS": "a:b", "SECRET_KEY": "", "INKQ_DEV": ""})


def test_metrics_and_docs(make_api):
    api = make_api()
    api.get("/healthz", token=None)
    text = api.get("/metrics", token=None).text
    assert "inkq_http_requests_total" in text and 'inkq_queue_waiting{queue="enhance"}' in text
    guarded = make_api(METRICS_TOKEN="m-token")
    assert guarded.get("/metrics", token=None).status_code == 401
    assert guarded.get("/metrics", token="m-token").status_code == 200
    spec = api.get("/openapi.json", token=None).json()
    assert spec["openapi"].startswith("3.") and "/generate" in spec["paths"]
    assert api.get("/docs/", token=None).status_code == 200


def test_metrics_token_is_compared_by_digest(make_api, monkeypatch):
    """METRICS_TOKEN is checked through `same_secret`: two SHA-256 digests compared in constant time, so a
    wrong guess's timing tells neither where it differs nor how long the token is."""
    import hmac

    guarded = make_api(METRICS_TOKEN="m-token")
    compared, real = [], hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((len(a), len(b))) or real(a, b))
    assert guarded.get("/metrics", token="m").status_code == 401
    assert guarded.get("/metrics", token="m-token-and-more").status_code == 401
    assert guarded.get("/metrics", token="m-token").status_code == 200
    assert compared == [(32, 32)] * 3, compared


BASIC = basic(ADMIN_TOKEN)


@pytest.mark.parametrize("headers, status", [
    ({**BASIC}, 403),                                                    # Basic from no page at all
    ({**BASIC, "Origin": "http://evil.example"}, 403),
    ({**BASIC, "Origin": "null"}, 403),
    ({**BASIC, "Referer": "http://evil.example/page"}, 403),
    ({**BASIC, "Sec-Fetch-Site": "cross-site", "Origin": "{self}"}, 403),  # Sec-Fetch-Site wins
    ({**BASIC, "Sec-Fetch-Site": "same-site"}, 403),
    ({**BASIC, "Origin": "{self}"}, 200),
    ({**BASIC, "Referer": "{self}/admin/rq/"}, 200),
    ({**BASIC, "Sec-Fetch-Site": "same-origin"}, 200),
    ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),                   # an API client: no page, no Origin
    ({"Authorization": f"Bearer {ADMIN_TOKEN}", "Origin": "http://evil.example"}, 403),
    ({"Origin": "http://evil.example"}, 401),                            # no credentials: the admin check answers
])
def test_admin_state_changes_must_be_same_origin(api, headers, status):
    headers = {k: v.replace("{self}", api.url) for k, v in headers.items()}
    response = api.post("/admin/rq/queue/csrf-http/queued/empty", token=None, headers=headers)
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json()["code"] == "forbidden"


def test_admin_credits_for_bearer_clients_and_not_cross_site(api):
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert api.post("/admin/credits/alice", token=None, headers=bearer, json={"set": 5}).json() == {"balance": 5}
    evil = api.post("/admin/credits/alice", token=None, json={"set": 99},
                    headers={**bearer, "Sec-Fetch-Site": "cross-site"})
    assert evil.status_code == 403 and evil.json()["code"] == "forbidden"
    assert api.post("/admin/credits/jwt:user_2abc", token=ADMIN_TOKEN, json={"add": 1}).status_code == 200
    bad = api.post("/admin/credits/%3Cimg%3E", token=ADMIN_TOKEN, json={"add": 1})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"


@pytest.mark.parametrize("path", ["/admin/rq/", "/admin/rq/0/data/queues.json", "/admin/queue-stats"])
def test_admin_pages_cannot_be_framed_and_confine_scripts(api, path):
    response = api.get(path, token=ADMIN_TOKEN)
    assert response.status_code == 200
    assert response.headers["X-Frame-Options"] == "DENY"
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]


def test_jwt_sub_equal_to_an_api_key_user_is_another_user(make_api):
    secret = "s" * 40
    api = make_api(JWT_SECRET=secret)
    job_id = api.submit(drawing(), operation="color-match").json()["jobId"]
    alias = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    assert api.get(f"/status/{job_id}", token=alias).status_code == 404
    assert job_id not in [j["jobId"] for j in api.get("/jobs", token=alias).json()["jobs"]]
    assert api.get(f"/status/{job_id}", token="tok-alice").status_code == 200


def test_metrics_labels_stay_bounded_under_random_methods_and_paths(make_api):
    import random
    import string

    api = make_api()
    api.get("/healthz", token=None)
    before = api.get("/metrics", token=None).text
    rng = random.Random(7)
    for _ in range(60):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 2000)))
        path = "/" + "".join(rng.choices(string.ascii_lowercase + "/", k=rng.randint(1, 300)))
        api.http.request(method, api.url + path, timeout=10)
        api.get(path, token=None)
    after = api.get("/metrics", token=None).text
    series = [line for line in after.splitlines() if line.startswith("inkq_http_requests_total{")]
    methods = {line.split('method="')[1].split('"')[0] for line in series}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    assert len(series) <= 12, series
    assert len(after) < len(before) + 5000
