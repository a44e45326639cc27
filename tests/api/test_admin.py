"""Admin surfaces: queue statistics, rq-dashboard behind admin credentials; auth through HTTP."""
from __future__ import annotations

import base64
import time

import jwt
import pytest
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from tests.conftest import ADMIN_TOKEN, drawing
from tests.servers import RedisServer

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
                            "oldestWaitingS", "liveWorkers", "totals", "runTime", "queueWait"}
    assert stats["stencil-generation"]["completed"] >= 1
    # one process per queue (its CONCURRENCY_STENCIL=2 as threads); one that an earlier test SIGKILLed is
    # counted until the recovery sweep forgets it, a few seconds later
    assert stats["stencil-generation"]["workers"] >= 1
    assert stats["color-match"]["concurrency"] == 10  # the API reports its configured default
    assert api.get("/admin/queue-stats", token="tok-alice").status_code == 403
    unauthenticated = api.get("/admin/queue-stats", token=None)
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "unauthenticated"


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


@pytest.mark.parametrize("path", ["/admin/rq/requeue/enhance", "/admin/rq/job/{job}/delete",
                                  "/admin/rq/job/{job}/requeue", "/admin/rq/queue/enhance/failed/empty",
                                  "/admin/rq/queue/enhance/compact"])
def test_dashboard_actions_are_post_only_and_admin_only(api, path):
    job_id = api.submit(drawing(), operation="color-match").json()["jobId"]
    path = path.format(job=job_id)
    assert api.get(path, token=ADMIN_TOKEN).status_code == 405
    assert api.post(path, token="tok-alice").status_code == 403
    assert api.post(path, token=None).status_code == 401
    done = api.post(path, token=None, headers=basic(ADMIN_TOKEN))
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
                    "ADMIN_TOKEN": "", "SECRET_KEY": "k", "INKQ_DEV": ""})
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
