"""The status read path: one Redis command per read, served below Flask for the owner, and exactly
the body the Flask view gives; everything else falls through to the view and its errors."""
from __future__ import annotations

import time

import pytest
import redis as redis_lib

from api import create_app
from api.fastpath import FastStatus
from tests.conftest import base_config, photo
from tests.servers import RedisServer


@pytest.fixture
def app(redis_url):
    return create_app(base_config(redis_url))


def _environ(app, job_id, token="tok-alice", host="api.example:8443", scheme="https"):
    return {"REQUEST_METHOD": "GET", "PATH_INFO": f"/status/{job_id}", "SERVER_NAME": "x", "SERVER_PORT": "80",
            "wsgi.url_scheme": scheme, "HTTP_HOST": host, "HTTP_AUTHORIZATION": f"Bearer {token}"}


def _flask_body(app, job_id, token="tok-alice", base_url="https://api.example:8443"):
    with app.test_request_context(f"/status/{job_id}", base_url=base_url, headers={"Authorization": f"Bearer {token}"}):
        return app.make_response(app.view_functions["jobs.status"](job_id)).get_data()


def _submit(app) -> str:
    import base64

    client = app.test_client()
    response = client.post("/generate", json={"image": base64.b64encode(photo((96, 96))).decode(), "engine": "local"},
                           headers={"Authorization": "Bearer tok-alice"})
    assert response.status_code == 202, response.json
    return response.json["jobId"]


def test_fast_path_gives_the_flask_views_body_for_every_state(app, api, workers):
    fast = FastStatus(None, app.extensions["inkq"])
    job_id = _submit(app)
    # The session's workers may take the job between two reads, and a process's cached view lags the
    # job until its announcement arrives: look for a Flask body read between two identical fast-path
    # bodies and equal to them (waiting or active, progress included).
    for _ in range(200):
        before = fast._answer(_environ(app, job_id), job_id)
        flask_body = _flask_body(app, job_id)
        if before == flask_body == fast._answer(_environ(app, job_id), job_id):
            break
        time.sleep(0.01)
    assert before is not None and before == flask_body
    api.wait(job_id)
    completed = fast._answer(_environ(app, job_id), job_id)
    assert completed is not None and completed == _flask_body(app, job_id)
    assert b'"status":"completed"' in completed and b'"image":"https://api.example:8443/files/' in completed


def test_fast_path_leaves_everything_but_the_owners_read_to_flask(app):
    fast = FastStatus(None, app.extensions["inkq"])
    job_id = _submit(app)
    assert fast._answer(_environ(app, job_id, token="tok-bob"), job_id) is None  # another user's job
    assert fast._answer(_environ(app, job_id, token="nope"), job_id) is None  # bad credentials
    assert fast._answer(_environ(app, "0" * 32), "0" * 32) is None  # unknown job
    client = app.test_client()
    assert client.get(f"/status/{job_id}", headers={"Authorization": "Bearer tok-bob"}).status_code == 404
    assert client.get(f"/status/{job_id}", headers={"Authorization": "Bearer nope"}).json["code"] == "unauthenticated"
    assert client.get(f"/status/{job_id}", headers={"Authorization": "Bearer tok-alice"}).json["jobId"] == job_id


def _calls(admin) -> dict:
    calls = {name.split("|")[0]: stats["calls"] for name, stats in admin.info("commandstats").items()}
    for name in ("cmdstat_config", "cmdstat_info", "cmdstat_subscribe", "cmdstat_ping"):
        calls.pop(name, None)
    return calls


def test_a_status_read_is_one_redis_command(tmp_path):
    server = RedisServer()  # its own: nothing else may send commands while they are counted
    try:
        app = create_app(base_config(server.url, STATUS_CACHE_S=0))
        job_id = _submit(app)
        client = app.test_client()
        client.get(f"/status/{job_id}", headers={"Authorization": "Bearer tok-alice"})  # scripts loaded
        admin = redis_lib.Redis.from_url(server.url)
        admin.config_resetstat()
        for _ in range(5):
            assert client.get(f"/status/{job_id}", headers={"Authorization": "Bearer tok-alice"}).status_code == 200
        calls = _calls(admin)
        # one EVALSHA per read from the API; Redis also counts the calls made inside the script: the job, its
        # result and charge, and its place (tasks/core/lua/fair_place.lua: ZRANK, then O(1) reads)
        assert calls.pop("cmdstat_evalsha") == 5, calls
        assert set(calls) <= {"cmdstat_hmget", "cmdstat_xrevrange", "cmdstat_exists", "cmdstat_zrank",
                              "cmdstat_hget", "cmdstat_get", "cmdstat_zcard"}, calls
        assert all(n == 5 for n in calls.values()), calls
    finally:
        server.stop()


def test_unchanged_jobs_are_read_once_and_announced_changes_at_once(tmp_path):
    """The status cache: repeated polls of a waiting job cost no Redis command; an announced change
    is seen by the very next read; a change that bypasses announcements shows within STATUS_CACHE_S."""
    from tasks.core.changes import announce
    from tests.servers import wait_until

    server = RedisServer()
    try:
        app = create_app(base_config(server.url, STATUS_CACHE_S=2))
        hub = app.extensions["inkq"].hub
        job_id = _submit(app)
        client = app.test_client()
        auth = {"Authorization": "Bearer tok-alice"}
        client.get(f"/status/{job_id}", headers=auth)  # starts the listener
        wait_until(hub.listening.is_set, timeout=10, what="the listener")
        assert client.get(f"/status/{job_id}", headers=auth).json["stage"] == "queued"  # read, cached
        admin = redis_lib.Redis.from_url(server.url)
        admin.config_resetstat()
        for _ in range(20):
            assert client.get(f"/status/{job_id}", headers=auth).json["status"] == "waiting"
        assert "cmdstat_evalsha" not in _calls(admin), _calls(admin)

        # a writer changes the job and announces it: the next read sees it
        from rq.job import Job
        from rq.serializers import JSONSerializer
        job = Job.fetch(job_id, connection=admin, serializer=JSONSerializer)
        job.meta["stage"] = "tracing lines"
        job.save_meta()
        announce(admin, job_id)
        wait_until(lambda: client.get(f"/status/{job_id}", headers=auth).json["stage"] == "tracing lines",
                   timeout=1, interval=0.01, what="the announced change")

        # a change nobody announces (an operator in rq-dashboard) shows once the entry is 2 s old
        client.get(f"/status/{job_id}", headers=auth)
        job.meta["stage"] = "edited by hand"
        job.save_meta()
        assert client.get(f"/status/{job_id}", headers=auth).json["stage"] == "tracing lines"
        wait_until(lambda: client.get(f"/status/{job_id}", headers=auth).json["stage"] == "edited by hand",
                   timeout=5, interval=0.1, what="the unannounced change")

        # losing the subscription voids the cache at once
        client.get(f"/status/{job_id}", headers=auth)
        job.meta["stage"] = "after the listener dropped"
        job.save_meta()
        admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        wait_until(lambda: client.get(f"/status/{job_id}", headers=auth).json["stage"]
                   == "after the listener dropped", timeout=1, interval=0.01, what="the cache to be voided")
        hub.stop()
    finally:
        server.stop()


def test_streams_woken_together_read_their_job_once(tmp_path, monkeypatch):
    """`Hub.read`: readers of a job that arrive while a read of it is in flight share that read; one
    arriving after an announcement during the read starts its own, and sees the announced change."""
    import threading

    import api.events as events
    from rq.job import Job
    from rq.serializers import JSONSerializer

    server = RedisServer()
    try:
        app = create_app(base_config(server.url))
        hub, redis = app.extensions["inkq"].hub, app.extensions["inkq"].redis
        job_id = _submit(app)
        real, reads = events.read, []

        def slow_read(client, wanted):  # the job as it is now, answered 0.3 s later
            view = real(client, wanted)
            reads.append(view.meta.get("stage", "queued"))
            time.sleep(0.3)
            return view

        monkeypatch.setattr(events, "read", slow_read)
        views = []
        readers = [threading.Thread(target=lambda: views.append(hub.read(redis, job_id))) for _ in range(20)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(10)
        assert len(views) == 20 and {v.id for v in views} == {job_id} and reads == ["queued"], (len(views), reads)

        # a read in flight when the job changes and is announced is not joined by later readers
        first = threading.Thread(target=lambda: views.append(hub.read(redis, job_id)))
        first.start()
        time.sleep(0.1)  # the first read has the job as it was
        job = Job.fetch(job_id, connection=redis_lib.Redis.from_url(server.url), serializer=JSONSerializer)
        job.meta["stage"] = "tracing lines"
        job.save_meta()
        hub._wake(job_id)  # what the listener does with the announcement
        assert hub.read(redis, job_id).meta["stage"] == "tracing lines"
        first.join(10)
        assert reads == ["queued", "queued", "tracing lines"], reads
    finally:
        server.stop()


class _RoundTrips:
    """Counts the requests this process sends to Redis (a pipeline is one)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = redis_lib.connection.AbstractConnection.send_packed_command

        def counted(connection, command, check_health=True):
            self.count += 1
            return real(connection, command, check_health)

        monkeypatch.setattr(redis_lib.connection.AbstractConnection, "send_packed_command", counted)


def _open_one(client, job_id, token="tok-alice"):
    """Open a stream, take its first chunk, close it (the lease given back); (status, first chunk, response)."""
    response = client.get(f"/status/{job_id}/events", headers={"Authorization": f"Bearer {token}"}, buffered=False)
    if response.status_code != 200:
        return response.status_code, None, response
    first = next(iter(response.response))
    response.close()
    return 200, first if isinstance(first, bytes) else first.encode(), response


def test_opening_an_event_stream_reads_the_job_once(tmp_path, monkeypatch):
    """An open is one round trip to Redis: the read limiter's script and the open script (ownership,
    lease, the first event's read) pipelined; the first event goes out with the retry line in one
    write (2,000 opens at once)."""
    server = RedisServer()
    try:
        app = create_app(base_config(server.url))
        job_id = _submit(app)
        client = app.test_client()
        _open_one(client, job_id)  # scripts loaded, connections made
        admin = redis_lib.Redis.from_url(server.url)
        admin.config_resetstat()
        trips = _RoundTrips(monkeypatch)
        firsts = [_open_one(client, job_id)[1] for _ in range(3)]
        assert trips.count == 6, trips.count  # per open: the pipelined open, and the lease given back on close
        monkeypatch.undo()
        calls = _calls(admin)
        assert calls.pop("cmdstat_evalsha") == 6, calls  # the read limiter's script and the open script
        assert calls.pop("cmdstat_hmget") == 3, calls  # the job is read once per open
        assert calls.pop("cmdstat_zrem") == 3, calls  # the leases given back
        assert not admin.zcard("inkq:streams:alice")
        for first in firsts:
            assert first.startswith(b"retry: 2000\n\nevent: status\ndata: "), first
            assert b'"status": "waiting"' in first and job_id.encode() in first
        # another user's job, and an unknown one, are the same 404, and no lease is left behind
        theirs = client.get(f"/status/{job_id}/events", headers={"Authorization": "Bearer tok-bob"})
        unknown = client.get(f"/status/{'0' * 32}/events", headers={"Authorization": "Bearer tok-bob"})
        assert theirs.status_code == unknown.status_code == 404 and theirs.json == unknown.json
        assert not admin.exists("inkq:streams:bob")
        assert not app.extensions["inkq"].hub._watchers
    finally:
        server.stop()


def test_stream_opens_count_once_against_the_read_limit(tmp_path):
    """The open's count, pipelined with the open: every open counts once, also one the stream cap refuses;
    the open over the limit is the 429 with Retry-After and keeps no lease; after Redis lost its scripts
    (restart, SCRIPT FLUSH) opens still work and still count."""
    server = RedisServer()
    try:
        app = create_app(base_config(server.url, READ_RATE_LIMIT="5/minute", MAX_STREAMS_PER_USER=1))
        job_id = _submit(app)
        client = app.test_client()
        admin = redis_lib.Redis.from_url(server.url)
        assert _open_one(client, job_id)[0] == 200  # 1
        held = client.get(f"/status/{job_id}/events", headers={"Authorization": "Bearer tok-alice"},
                          buffered=False)  # 2, holds the one stream allowed
        assert held.status_code == 200
        capped = client.get(f"/status/{job_id}/events", headers={"Authorization": "Bearer tok-alice"})  # 3
        assert capped.status_code == 429 and "event streams" in capped.json["error"], capped.json
        held.close()
        admin.script_flush()
        assert _open_one(client, job_id)[0] == 200  # 4, the scripts loaded again
        assert _open_one(client, job_id)[0] == 200  # 5
        over = client.get(f"/status/{job_id}/events", headers={"Authorization": "Bearer tok-alice"})
        assert over.status_code == 429 and "requests" in over.json["error"], over.json
        assert 1 <= int(over.headers["Retry-After"]) <= 60
        assert not admin.zcard("inkq:streams:alice")  # the refused open kept no lease
        assert client.get(f"/status/{job_id}/events", headers={"Authorization": "Bearer tok-bob"}).status_code == 404
    finally:
        server.stop()
