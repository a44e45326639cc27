"""Fixtures: one throwaway redis-server and one set of real worker pools for the session;
an API served over real HTTP per test, built by `create_app(config)` with a mapping."""
from __future__ import annotations

import base64
import contextlib
import logging
import io
import queue
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis as redis_lib
import requests
from PIL import Image, ImageDraw

from tests.fakegemini import FakeGemini
from tests.servers import ApiServer, RedisServer, SeaweedFS, Workers, wait_until

ADMIN_TOKEN = "admin-secret-token"
WEBHOOK_SECRET = "whsec_aG9vay1zZWNyZXQtZm9yLXRlc3Rz"
SECRET_KEY = "test-signing-key-of-32-bytes-or-more"  # the APIs' and the shared worker service's: webhooks sign result links with it
WORKERS_PUBLIC_URL = "https://api.inkq.example"  # the shared worker service's PUBLIC_URL
logging.getLogger("werkzeug").setLevel(logging.WARNING)


# `make test` runs the suite in two parts (scripts/test.sh): everything else on two pytest-xdist
# processes, then these modules alone, because they measure time, load, memory or signal handling
# and a second test running beside them would measure that test instead.
SERIAL_MODULES = {
    "tests/tasks/test_recovery.py",  # recovery within 10-15 s of a kill, restarts, soak
    "tests/tasks/test_slots.py",  # warm stops within the grace period, timeouts
    "tests/tasks/test_quota.py",  # calls per 3 s window against the provider's limit
    "tests/tasks/test_worker.py",  # stops and signals during start-up and Redis outages
    "tests/tasks/test_gemini.py",  # a timeout answered within 2.5 s
    "tests/api/test_streams.py",  # 2,000 streams, a connection budget under attack
    "tests/api/test_hostile_input.py",  # slow bodies refused within 1-3 s
    "tests/api/test_credits_limits.py",  # work-horses killed mid-call, refunds at once
    "tests/test_processes.py",  # CPU priorities, group signals, prompt stops
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::")[0] in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture
def redis(redis_url):
    return redis_lib.Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def fake_gemini():
    with FakeGemini() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _reset_fake(request):
    if "fake_gemini" in request.fixturenames:
        request.getfixturevalue("fake_gemini").reset()
    yield


@pytest.fixture(autouse=True)
def _stop_event_listeners():
    """Stop, after each test, the event listeners of the apps it built: an app built with `create_app`
    alone (no `ApiServer`) kept its listener reconnecting, and logging, to a Redis the test had stopped,
    for the rest of the session, and once after pytest had closed its captured stderr ("Logging error")."""
    from api import events

    built = []
    original = events.Hub.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    events.Hub.__init__ = tracked
    try:
        yield
    finally:
        events.Hub.__init__ = original
        for hub in built:
            hub.stop()


@pytest.fixture(scope="session")
def workers(redis_url, fake_gemini, tmp_path_factory):
    log = tmp_path_factory.mktemp("workers") / "workers.log"
    env = {"REDIS_URL": redis_url, "CONCURRENCY_STENCIL": "2", "CONCURRENCY_ENHANCE": "1",
           "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
           "GEMINI_API_KEY": "test-key", "GEMINI_BASE_URL": fake_gemini.url, "GEMINI_TIMEOUT_S": "3",
           "WEBHOOK_SECRET": "whsec_aG9vay1zZWNyZXQtZm9yLXRlc3Rz", "WEBHOOK_RETRY_S": "1,1,1,1,1", "WEBHOOK_ALLOW_PRIVATE": "true",
           "LOG_LEVEL": "WARNING", "SECRET_KEY": SECRET_KEY, "PUBLIC_URL": WORKERS_PUBLIC_URL}
    procs = Workers(env, str(log))
    client = redis_lib.Redis.from_url(redis_url)
    from rq import Worker
    wait_until(lambda: len(Worker.all(connection=client)) >= 5, timeout=60, what="rq workers to register")
    yield procs
    procs.stop()


S3_BUCKET = "inkq-test"
S3_STORE = f"s3://{S3_BUCKET}/jobs"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """A real S3 server (SeaweedFS) with the test bucket, for the module that uses it (stopped after it)."""
    server = SeaweedFS(str(tmp_path_factory.mktemp("seaweed") / "weed.log"))
    server.bucket(S3_BUCKET)
    yield server
    server.close()


@pytest.fixture(scope="module")
def s3_redis():
    """A Redis of its own for the S3-mode stack: its workers must not take the Redis-mode jobs."""
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_workers(s3_redis, seaweed, fake_gemini, tmp_path_factory):
    """One worker service (all queues) with BLOB_STORE=s3 on SeaweedFS."""
    log = tmp_path_factory.mktemp("s3-workers") / "workers.log"
    env = {"REDIS_URL": s3_redis.url, "BLOB_STORE": S3_STORE, **seaweed.env, "CONCURRENCY_STENCIL": "1",
           "CONCURRENCY_ENHANCE": "1", "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1",
           "CONCURRENCY_WEBHOOKS": "1", "GEMINI_API_KEY": "test-key", "GEMINI_BASE_URL": fake_gemini.url,
           "GEMINI_TIMEOUT_S": "10", "WEBHOOK_SECRET": WEBHOOK_SECRET, "WEBHOOK_RETRY_S": "1,1,1",
           "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_LEVEL": "WARNING"}
    procs = Workers(env, str(log))
    procs.wait_ready(redis_lib.Redis.from_url(s3_redis.url), 4, timeout=120)  # the four operation queues
    procs.log_path = str(log)
    yield procs
    procs.stop()


@pytest.fixture
def make_s3_api(s3_redis, seaweed, fake_gemini):
    """Build an API on the S3-mode stack's Redis with BLOB_STORE=s3 (settings layered on top)."""
    from api import create_app

    servers = []

    def make(**extra):
        config = base_config(s3_redis.url, BLOB_STORE=S3_STORE, **seaweed.env, GEMINI_API_KEY="test-key",
                             GEMINI_BASE_URL=fake_gemini.url, WEBHOOK_ALLOW_PRIVATE="true")
        config.update({k: str(v) for k, v in extra.items()})
        server = ApiServer(create_app(config))
        servers.append(server)
        return Api(server.url)

    yield make
    for server in servers:
        server.stop()


def base_config(redis_url: str, **extra) -> dict:
    """The API config used by tests: two users, an admin, a signing key."""
    config = {"REDIS_URL": redis_url, "API_KEYS": "tok-alice:alice,tok-bob:bob",
              "ADMIN_TOKEN": ADMIN_TOKEN, "SECRET_KEY": SECRET_KEY, "LOG_FORMAT": "text",
              "RATE_LIMIT": "10000/minute", "READ_RATE_LIMIT": "100000/minute", "GEMINI_API_KEY": "",
              "ENGINE": "auto"}
    config.update({k: str(v) for k, v in extra.items()})
    return config


class Api:
    """An HTTP client bound to a served app."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def call(self, method: str, path: str, token: str | None = "tok-alice", **kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, **kw):
        return self.call("POST", path, **kw)

    def delete(self, path, **kw):
        return self.call("DELETE", path, **kw)

    def submit(self, image: bytes | None = None, token="tok-alice", **fields):
        body = dict(fields)
        if image is not None:
            body["image"] = base64.b64encode(image).decode()
        return self.post("/generate", token=token, json=body)

    def wait(self, job_id: str, token="tok-alice", statuses=("completed", "failed", "canceled"), timeout=120):
        def done():
            body = self.get(f"/status/{job_id}", token=token).json()
            return body if body["status"] in statuses else None
        return wait_until(done, timeout=timeout, interval=0.1, what=f"job {job_id} to reach {statuses}")


@pytest.fixture
def make_api(redis_url):
    from api import create_app

    servers = []

    def make(**extra):
        server = ApiServer(create_app(base_config(redis_url, **extra)))
        servers.append(server)
        return Api(server.url)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def api(make_api):
    return make_api()


@pytest.fixture
def user():
    """A fresh user id with its own API key, for tests that count a user's jobs."""
    name = "u" + uuid.uuid4().hex[:10]
    return name


def photo(size=(512, 512), seed=0) -> bytes:
    """A real photograph (scikit-image's astronaut) as JPEG, resized."""
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize(size)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def drawing(size=(256, 256), fmt="PNG") -> bytes:
    """A small synthetic picture with shapes, in the given format."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((30, 30, size[0] - 30, size[1] - 30), outline="black", width=6, fill=(200, 40, 40))
    draw.rectangle((size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2), fill=(20, 60, 200))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@contextlib.contextmanager
def webhook_receiver(answers=(), host="127.0.0.1", port=0, tls=None):
    """A local webhook receiver: (url, queue of (headers, body)); it answers the status codes in
    `answers` in turn, then 204. With `tls` (a server SSLContext) it speaks HTTPS."""
    calls: queue.Queue = queue.Queue()
    script = list(answers)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            calls.put(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(script.pop(0) if script else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://{host}:{server.server_port}/hook", calls
    finally:
        server.shutdown()


@pytest.fixture
def receiver():
    """A local webhook receiver: (url, queue of (headers, body))."""
    with webhook_receiver() as made:
        yield made
