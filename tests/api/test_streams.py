"""Event streams at scale: thousands open at once on the deployed server (gunicorn, gevent), woken by
announcements (tasks/core/changes.py) rather than by polling, and no thread held per stream."""
from __future__ import annotations

import base64
import socket
import threading
import time
from datetime import datetime

import pytest
import redis as redis_lib
import requests

from tests.conftest import Api, base_config, photo
from tests.servers import ApiServer, GunicornApi, RedisServer, Workers, thread_count, wait_until
from tests.streams import Stream, run

JOBS, PER_JOB = 40, 50  # 2,000 streams


@pytest.fixture
def own_redis():
    server = RedisServer()
    yield server
    server.stop()


def test_two_thousand_streams_each_see_their_job_end(own_redis, tmp_path):
    # EVENTS_POLL_S=120: a stream re-reads on its own only every 2 minutes, so every event below
    # arrives because a writer announced it.
    api = GunicornApi({"REDIS_URL": own_redis.url, "API_KEYS": "tok-s:streamer", "SECRET_KEY": "k" * 32,
                       "WEB_CONCURRENCY": 2, "MAX_INFLIGHT_PER_USER": 100, "RATE_LIMIT": "100000/minute", "MAX_STREAMS_PER_USER": 5000,
                       "EVENTS_POLL_S": 120, "GEMINI_API_KEY": "", "ACCESS_LOG": "", "LOG_FORMAT": "text"},
                      str(tmp_path / "api.log"))
    workers = None
    try:
        client = Api(api.url)
        image = photo((160, 160))
        ids = []
        for _ in range(JOBS):  # no workers yet: every job waits
            response = client.submit(image, token="tok-s", engine="local")
            assert response.status_code == 202, response.text
            ids.append(response.json()["jobId"])
        streams = [Stream(job_id, "tok-s") for job_id in ids for _ in range(PER_JOB)]
        follower = threading.Thread(target=run, args=("127.0.0.1", api.port, streams, 240, 2.0), daemon=True)
        follower.start()

        wait_until(lambda: all(s.first_event or s.error for s in streams), timeout=90, interval=0.2,
                   what="every stream's first event")
        errors = [s.error for s in streams if s.error]
        assert not errors, f"{len(errors)} streams failed, first: {errors[0]}"
        assert all(s.http_status == 200 and s.last["status"] == "waiting" for s in streams)
        # All 2,000 are open now: the API's processes hold a handful of threads, not one per stream.
        threads = {pid: thread_count(pid) for pid in api.workers()}
        assert len(threads) == 2 and max(threads.values()) < 20, threads
        health = requests.get(api.url + "/healthz", timeout=10)
        assert health.status_code == 200

        admin = redis_lib.Redis.from_url(own_redis.url)
        admin.config_resetstat()
        workers = Workers({"REDIS_URL": own_redis.url, "CONCURRENCY_STENCIL": "5", "CONCURRENCY_ENHANCE": "1",
                           "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1", "GEMINI_API_KEY": "",
                           "LOG_LEVEL": "WARNING"}, str(tmp_path / "workers.log"))
        follower.join(200)
        assert not follower.is_alive(), "streams still open after 200 s"
        errors = [s.error for s in streams if s.error]
        assert not errors, f"{len(errors)} streams failed, first: {errors[0]}"
        for stream in streams:
            assert stream.last["jobId"] == stream.job_id
            assert stream.last["status"] == "completed", stream.last
            assert stream.last["result"]["image"].startswith(api.url + "/files/")
            assert [e["status"] for e in stream.events][0] == "waiting"
        # Each stream ended soon after its job ended, not at a 120 s re-read (measured from the job's own
        # endedAt, so a slow, loaded box that takes long to run the jobs does not fail it).
        lags = [s.ended - datetime.fromisoformat(s.last["endedAt"].replace("Z", "+00:00")).timestamp()
                for s in streams]
        assert max(lags) < 30, f"a stream heard its job's end {max(lags):.1f} s late"
        # The 50 streams of a job woken by one announcement read the job once per API process between
        # them (`events.Hub.read`), not once each.
        stats = admin.info("commandstats")
        reads, announced = stats["cmdstat_hmget"]["calls"], stats["cmdstat_publish"]["calls"]
        assert reads < 10 * announced, (reads, announced)
    finally:
        if workers is not None:
            workers.stop()
        api.stop()


def test_streams_recover_from_a_lost_listener_connection(own_redis, tmp_path):
    """The process's one pub/sub connection is killed; streams still get their events (the
    listener reconnects and wakes every stream to re-read), long before their own re-read."""
    from api import create_app

    server = ApiServer(create_app(base_config(own_redis.url, EVENTS_POLL_S=120)))
    workers = None
    try:
        client = Api(server.url)
        job_id = client.submit(photo((96, 96)), engine="local").json()["jobId"]
        stream = Stream(job_id, "tok-alice")
        host, port = server.url.rsplit(":", 1)
        follower = threading.Thread(target=run, args=(host.split("//")[1], int(port), [stream], 90), daemon=True)
        follower.start()
        wait_until(lambda: stream.first_event, timeout=10, what="the first event")
        admin = redis_lib.Redis.from_url(own_redis.url)
        wait_until(lambda: admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub"), timeout=10,
                   what="the listener's connection to be killed")
        started = time.time()
        workers = Workers({"REDIS_URL": own_redis.url, "CONCURRENCY_STENCIL": "1", "CONCURRENCY_ENHANCE": "1",
                           "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1", "GEMINI_API_KEY": "",
                           "LOG_LEVEL": "WARNING"}, str(tmp_path / "workers.log"))
        follower.join(60)
        assert stream.error is None and stream.last["status"] == "completed", (stream.error, stream.events)
        assert stream.ended - started < 60
    finally:
        if workers is not None:
            workers.stop()
        server.stop()


def _partial_request(port: int) -> socket.socket:
    """A connection that sends a request line and one header, then nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    sock.setblocking(False)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server answered (408) or closed the connection."""
    try:
        sock.recv(4096)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_an_attacker_cannot_use_up_the_connections(own_redis, tmp_path):
    """One gunicorn process with 30 connections. Mallory holds as many event streams as she can and
    keeps 60 sockets that never finish their headers, opening a new one whenever the server drops
    one. Bob's submissions and status reads still answer, each within 5 s (api/server.py: header
    deadline and shedding; api/leases.py: MAX_STREAMS_PER_USER)."""
    api = GunicornApi({"REDIS_URL": own_redis.url, "API_KEYS": "tok-m:mallory,tok-b:bob", "SECRET_KEY": "k" * 32,
                       "WEB_CONCURRENCY": 1, "GUNICORN_WORKER_CONNECTIONS": 30, "MAX_STREAMS_PER_USER": 5,
                       "REQUEST_HEADER_TIMEOUT_S": 3, "REQUEST_BODY_TIMEOUT_S": 3, "EVENTS_POLL_S": 1, "GEMINI_API_KEY": "",
                       "ACCESS_LOG": "", "LOG_FORMAT": "text"}, str(tmp_path / "api.log"))
    held: list[socket.socket] = []
    stop = threading.Event()
    try:
        image = photo((64, 64))
        job = Api(api.url).submit(image, token="tok-m", engine="local").json()["jobId"]
        streams = [Stream(job, "tok-m") for _ in range(40)]
        follower = threading.Thread(target=run, args=("127.0.0.1", api.port, streams, 15), daemon=True)
        follower.start()
        wait_until(lambda: all(s.http_status or s.error for s in streams), timeout=30, what="every stream's answer")
        assert not [s.error for s in streams if s.error], [s.error for s in streams if s.error][:3]
        statuses = sorted(s.http_status for s in streams)
        assert statuses.count(200) == 5 and statuses.count(429) == 35, statuses

        def attack():
            while not stop.is_set():
                for sock in [s for s in held if _closed_by_server(s)]:
                    held.remove(sock)
                    sock.close()
                while len(held) < 60 and not stop.is_set():
                    try:
                        held.append(_partial_request(api.port))
                    except OSError:
                        break
                time.sleep(0.05)
        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        wait_until(lambda: len(held) >= 60, timeout=20, what="60 partial requests")
        bob = Api(api.url)
        bob.http.close()
        for _ in range(5):
            with requests.Session() as fresh:  # a new connection each time, as a crowd of clients would
                answer = fresh.post(api.url + "/generate", json={"image": base64.b64encode(image).decode()},
                                    headers={"Authorization": "Bearer tok-b"}, timeout=5)
                assert answer.status_code == 202, answer.text
                status = fresh.get(api.url + answer.json()["statusUrl"], headers={"Authorization": "Bearer tok-b"},
                                   timeout=5)
                assert status.status_code == 200 and status.json()["status"] == "waiting"
                assert fresh.get(api.url + "/healthz", timeout=5).status_code == 200
        stop.set()
        attacker.join(5)
        for sock in held:
            sock.close()

        # a socket that sends one header line a second is answered 408 and closed at the header deadline
        slow = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = b""
        for n in range(8):
            try:
                slow.sendall(b"X-Dribble-%d: 1\r\n" % n)
            except OSError:
                break
            slow.settimeout(1)
            try:
                answer += slow.recv(4096)
                if answer:
                    break
            except socket.timeout:
                pass
        assert answer.startswith(b"HTTP/1.1 408"), answer
        slow.close()

        # a body that trickles in is refused at the body deadline, as contract JSON
        trickle = socket.create_connection(("127.0.0.1", api.port), timeout=10)
        trickle.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok-b\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"image\": \"")
        reply = b""
        for _ in range(10):
            try:
                trickle.sendall(b"AAAA")
            except OSError:
                break
            trickle.settimeout(1)
            try:
                reply += trickle.recv(4096)
                if b"\r\n\r\n" in reply:
                    break
            except socket.timeout:
                pass
        trickle.settimeout(5)
        while b'"}' not in reply:
            reply += trickle.recv(4096) or b'"}'
        assert reply.startswith(b"HTTP/1.1 400") and b'"invalid_request"' in reply, reply
        trickle.close()
        follower.join(20)  # the streams' client leaves; the server notices at its next write (EVENTS_POLL_S)
    finally:
        stop.set()
        for sock in held:
            sock.close()
        api.stop()


def test_a_busy_connection_cannot_hold_a_worker(own_redis, tmp_path):
    """A gevent worker switches between connections only when a read or write would block. A client
    whose next request is always already there (pipelined here; on a 2-core box, a kept-alive client
    and Redis answering on the other core while Python is still busy) was served request after
    request while the process's other connections waited: submit latencies of 250-400 ms in bursts.
    Each request starts with a turn of the event loop (`api.server`), so a request
    that arrives meanwhile on another connection is served among the first few of the busy one's."""
    api = GunicornApi({"REDIS_URL": own_redis.url, "API_KEYS": "tok-a:alice", "SECRET_KEY": "k" * 32,
                       "WEB_CONCURRENCY": 1, "GEMINI_API_KEY": "", "ACCESS_LOG": "", "LOG_FORMAT": "text"},
                      str(tmp_path / "api.log"))
    try:
        pipelined = 400
        busy = socket.create_connection(("127.0.0.1", api.port), timeout=30)
        other = socket.create_connection(("127.0.0.1", api.port), timeout=30)
        time.sleep(0.5)  # both accepted
        one = b"GET /no-such-path HTTP/1.1\r\nHost: x\r\n\r\n"  # a JSON 404: no Redis, no read that waits
        busy.sendall(one * pipelined)
        time.sleep(0.002)
        other.sendall(one)
        other.recv(1)  # the other connection's answer has begun
        busy.setblocking(False)
        seen = b""
        while True:
            try:
                chunk = busy.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            seen += chunk
        answered = seen.count(b"HTTP/1.1 404")
        assert answered < pipelined // 4, f"{answered} of the busy connection's {pipelined} requests went first"
        busy.close()
        other.close()
    finally:
        api.stop()
