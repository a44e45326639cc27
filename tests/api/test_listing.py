"""`GET /jobs` costs what `limit` asks, not what the user's history holds; reads are rate limited per user."""
from __future__ import annotations

import pytest

from api import create_app
from api.store import INDEX_CAP, LIST_WINDOW, JobStore, new_job_id, user_index_key
from tests.conftest import Api, base_config
from tests.servers import ApiServer, RedisServer


@pytest.fixture(scope="module")
def quiet():
    """A Redis of its own with no workers (jobs written here stay waiting) and an API on it."""
    server = RedisServer()
    api = ApiServer(create_app(base_config(server.url, API_KEYS="tok-short:short,tok-long:long")))
    import redis as redis_lib
    yield Api(api.url), redis_lib.Redis.from_url(server.url)
    api.stop()
    server.stop()


def history(client, user: str, jobs: int) -> None:
    """Write `jobs` waiting jobs for `user` through the API's own store code (no HTTP, no workers)."""
    store = JobStore(client, 86400, 604800)
    for _ in range(jobs):
        store.enqueue(new_job_id(), user, "ia-gen", {"prompt": "p", "engine": "gemini"}, None, None)


def commands(client) -> int:
    """Commands Redis has run so far (scripts' inner calls included)."""
    return sum(stats["calls"] for name, stats in client.info("commandstats").items())


def test_listing_by_status_is_bounded_by_the_window_not_the_history(quiet):
    api, client = quiet
    history(client, "short", 150)
    history(client, "long", 2500)

    def cost(token: str, path: str) -> int:
        before = commands(client)
        response = api.get(path, token=token)
        assert response.status_code == 200, response.text
        return commands(client) - before

    short, long = cost("tok-short", "/jobs?status=completed"), cost("tok-long", "/jobs?status=completed")
    # each job read is one script of 7 commands (3, and 4 for a waiting job's place); the rest (auth, limiter,
    # index) is a handful
    assert long <= 8 * LIST_WINDOW + 40, long
    assert short <= 8 * 150 + 40 and long < 2 * short, (short, long)
    assert cost("tok-long", "/jobs?limit=5") <= 8 * 50 + 40  # without a filter: one page
    assert len(api.get("/jobs?limit=100&status=waiting", token="tok-long").json()["jobs"]) == 100
    assert client.zcard(user_index_key("long")) == INDEX_CAP  # the index keeps the newest jobs only


def test_reads_are_rate_limited_per_user(make_api):
    api = make_api(READ_RATE_LIMIT="4/minute")
    job_id = new_job_id()  # unknown: the fast path passes it to the Flask view, which counts it
    codes = [api.get(path).status_code for path in ("/jobs", "/credits", f"/status/{job_id}", f"/result/{job_id}")]
    assert codes == [200, 200, 404, 404], codes
    limited = api.get("/jobs")
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited", (codes, limited.text)
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert api.delete(f"/jobs/{job_id}").status_code == 429
    assert api.get(f"/result/{job_id}").status_code == 429
    assert api.get(f"/status/{job_id}/events").status_code == 429
    assert api.get("/jobs", token="tok-bob").status_code == 200  # other users are not limited
    assert api.get("/jobs", token="admin-secret-token").status_code != 429
