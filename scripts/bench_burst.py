"""Benchmark of jobs in threads: the burst, memory and local jobs, each beside a baseline
measured in the same run, on the same box.

1. The burst: BURST_USERS users (500) each submit one Gemini stencil at once (32 uploads of a ~60 KB
   JPEG in flight), CONCURRENCY_STENCIL=100, the fake Gemini answering a ~1.2 MB PNG after 6 s. Reported:
   drain (first submission -> last result), time-to-result p50/p95, submit p50/p99 during the burst, and
   the worker service's PSS (the sum of /proc/<pid>/smaps_rollup over its process tree), peak and idle.
   Also how close the etaS of each 202 came to the job's real time to result (the share within 25% or 5 s),
   the CPU each part of the box used while the 500 submissions ran (the API, the worker service,
   Redis, the fake provider, the load client), and the same burst once more with the worker service
   made to yield the CPU (its autogroup and every thread at nice 19: a diagnostic, not a deploy
   setting): how much of the submit tail the worker path causes, beside the API alone.
2. The idle worker service at the default concurrency: PSS.
3. LOCAL_USERS users (200) each submit one small local stencil: jobs/s, beside the engine alone (the
   same stencil, decode to PNG, in as many processes as the service's CPU pool, with no API, queue or
   store): the service's share of the cores. Printed, not judged: the issue sets no target for it.

Each part starts its own redis-server, the API under gunicorn (scripts/start_api.sh) and one worker
service (scripts/start_workers.sh). Exits 0; the targets are printed as PASS/FAIL.

The submissions come from Node.js (scripts/submit_load.mjs) when `node` is found, else from 32 Python
threads; the API alone is measured with both. The fake Gemini runs in a process of its own.
BENCH_BURST_PARTS (burst,idle,local) chooses what runs.
"""
from __future__ import annotations

import os
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import fakegemini as fg  # noqa: E402
from tests.servers import (GunicornApi, RedisServer, Workers, cpu_seconds, live_workers_expected,  # noqa: E402
                           process_tree, pss_mb)

BURST_USERS = int(os.environ.get("BENCH_BURST_USERS", "500"))
LOCAL_USERS = int(os.environ.get("BENCH_LOCAL_USERS", "200"))
LATENCY_S = float(os.environ.get("BENCH_GEMINI_LATENCY_S", "6"))
CLIENTS = 32
ENGINE_RUNS = 40
PARTS = tuple(os.environ.get("BENCH_BURST_PARTS", "burst,idle,local").split(","))


def _p(values, pct: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(pct / 100 * (len(values) - 1))))]


def _ended(raw: bytes | None) -> float | None:
    if not raw:
        return None
    text = raw.decode().rstrip("Z")
    return datetime.fromisoformat(text + "+00:00").timestamp()


class Box:
    """A redis-server, the API under gunicorn and one worker service, for one measurement."""

    def __init__(self, tmp: Path, users: int, workers_env: dict):
        self.redis = RedisServer()
        self.client = self.redis_client()
        tokens = [f"tok-{i}:user{i}" for i in range(users)]
        self.api = GunicornApi({"REDIS_URL": self.redis.url, "API_KEYS": ",".join(tokens), "SECRET_KEY": "b" * 32,
                                "RATE_LIMIT": "1000000/minute", "QUEUE_MAX_DEPTH": "100000", "LOG_FORMAT": "text",
                                "GEMINI_API_KEY": "bench-key", "MAX_INFLIGHT_PER_USER": "100", "LOG_LEVEL": "WARNING"},
                               str(tmp / "api.log"))
        self.api_log = tmp / "api.log"
        self.workers = None
        if workers_env is None:  # the API alone: the baseline of submit latency
            return
        env = {"REDIS_URL": self.redis.url, "GEMINI_API_KEY": "bench-key", "LOG_LEVEL": "WARNING", **workers_env}
        self.workers = Workers(env, str(tmp / "workers.log"))
        self.workers.wait_ready(self.client, live_workers_expected(env), timeout=180)

    def redis_client(self):
        import redis

        return redis.Redis.from_url(self.redis.url)

    def pss(self) -> float:
        return pss_mb(process_tree(self.workers.proc.pid))

    def server_ms(self) -> list[float]:
        """The API's own time for each POST /generate (its access lines), in ms."""
        found = re.findall(r"POST /generate 202 .*?durationMs=([0-9.]+)", self.api_log.read_text(errors="replace"))
        return [float(ms) for ms in found]

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop(timeout=60)
        self.api.stop()
        self.redis.stop()


def submit_all(url: str, tokens: list[str], body: dict,
               client: str = "") -> tuple[dict[str, float], list[float], dict[str, float | None]]:
    """POST `body` once per token, CLIENTS connections at once; ({jobId: submitted at}, latencies in s,
    {jobId: the etaS its 202 gave}).

    With Node.js (`client` "node", the default when `node` is found), one event loop sends them
    (scripts/submit_load.mjs); with "python", CLIENTS threads of requests in this process."""
    client = client or ("node" if shutil.which("node") else "python")
    if client == "node":
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "tokens").write_text("\n".join(tokens))
            Path(tmp, "body.json").write_text(json.dumps(body))
            out = subprocess.run(["node", str(ROOT / "scripts" / "submit_load.mjs"), url, str(Path(tmp, "tokens")),
                                  str(Path(tmp, "body.json")), str(CLIENTS)], capture_output=True, text=True,
                                 timeout=600, check=True).stdout
        rows = json.loads(out)
        return ({row[0]: row[1] / 1000 for row in rows}, [row[2] / 1000 for row in rows],
                {row[0]: row[3] for row in rows})
    local = threading.local()
    submitted: dict[str, float] = {}
    latencies: list[float] = []
    etas: dict[str, float | None] = {}

    def one(token):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        at = time.time()
        started = time.perf_counter()
        response = session.post(url + "/generate", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 202, response.text
        submitted[response.json()["jobId"]] = at
        etas[response.json()["jobId"]] = response.json().get("etaS")

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, tokens))
    return submitted, latencies, etas


def wait_results(box: Box, submitted: dict[str, float], timeout: float, sample=None) -> dict[str, float]:
    """Wait until every job has ended (read in Redis); {jobId: ended at}. `sample()` runs every half second."""
    ended: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < len(submitted) and time.monotonic() < deadline:
        pipe = box.client.pipeline()
        pending = [job_id for job_id in submitted if job_id not in ended]
        for job_id in pending:
            pipe.hmget(f"rq:job:{job_id}", "status", "ended_at")
        for job_id, (status, at) in zip(pending, pipe.execute()):
            if status in (b"finished", b"failed", b"stopped") and _ended(at):
                ended[job_id] = _ended(at)
        if sample:
            sample()
        time.sleep(0.5)
    return ended


def yield_cpu(root: int, nice: int = 19) -> None:
    """Make a process tree that leads its own session yield the CPU: its autogroup (Linux shares the
    CPU between sessions before nice values count) and every thread at `nice`."""
    with open(f"/proc/{root}/autogroup", "w") as f:
        f.write(str(nice))
    for pid in process_tree(root):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), nice)
            except OSError:
                pass


def burst(image: bytes, yielding: bool = False) -> dict:
    import base64

    tmp = Path(tempfile.mkdtemp(prefix="inkq-burst-"))
    with fg.OwnProcess(fg.slow(LATENCY_S, fg.ok(fg.big_png(1_200_000)))) as gemini:
        box = Box(tmp, BURST_USERS, {"CONCURRENCY_STENCIL": "100", "GEMINI_BASE_URL": gemini.url,
                                     "GEMINI_TIMEOUT_S": "60"})
        try:
            time.sleep(3)
            if yielding:
                yield_cpu(box.workers.proc.pid)
            parts = {"api": process_tree(box.api.proc.pid), "workers": process_tree(box.workers.proc.pid),
                     "redis": [box.redis.proc.pid], "provider": [gemini._proc.pid]}
            idle = box.pss()
            peak = [idle]
            sampling = threading.Event()

            def sampler():
                while not sampling.is_set():
                    peak.append(box.pss())
                    sampling.wait(0.5)
            threading.Thread(target=sampler, daemon=True).start()
            body = {"operation": "stencil", "engine": "gemini", "image": base64.b64encode(image).decode()}
            first = time.time()
            before = {name: cpu_seconds(pids, reaped_children=True) for name, pids in parts.items()}
            client = _client_cpu()
            submitted, latencies, etas = submit_all(box.api.url, [f"tok-{i}" for i in range(BURST_USERS)], body)
            window = {name: cpu_seconds(pids, reaped_children=True) - before[name] for name, pids in parts.items()}
            window["client"] = _client_cpu() - client
            window["wall"] = time.time() - first
            ended = wait_results(box, submitted, timeout=600)
            sampling.set()
            statuses = [box.client.hget(f"rq:job:{job_id}", "status") for job_id in submitted]
        finally:
            box.close()
    server = box.server_ms()
    ttr = [ended[job_id] - at for job_id, at in submitted.items() if job_id in ended]
    # each 202's etaS beside the job's real time to result: |error| in s, and whether it is within 25% or 5 s
    errors = [(abs(etas[job_id] - (ended[job_id] - at)) if etas.get(job_id) is not None else None, ended[job_id] - at)
              for job_id, at in submitted.items() if job_id in ended]
    if os.environ.get("BENCH_BURST_ETA_FILE"):  # each job's submission offset, etaS and real time to result
        dump = Path(os.environ["BENCH_BURST_ETA_FILE"])
        while dump.exists():  # one file per burst of the run (the first is the measured one)
            dump = dump.with_name(dump.name + "+")
        dump.write_text(json.dumps(
            [[at - first, etas.get(job_id), ended[job_id] - at] for job_id, at in submitted.items() if job_id in ended]))
    return {"eta_errors": errors, "done": sum(s == b"finished" for s in statuses), "n": len(submitted),
            "drain": max(ended.values()) - first if ended else float("nan"),
            "p50": _p(ttr, 50), "p95": _p(ttr, 95), "submit_p50": _p(latencies, 50) * 1000,
            "submit_p99": _p(latencies, 99) * 1000, "pss_peak": max(peak), "pss_idle": idle,
            "calls": gemini.calls, "server_p50": _p(server, 50), "server_p99": _p(server, 99), "window": window}


def _client_cpu() -> float:
    """CPU used by the load client so far: this process (the Python client's threads) and its waited-for
    children (the Node.js client)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def submit_alone(image: bytes, client: str = "") -> dict:
    """The same burst of submissions with no worker service running: the API's own latency."""
    import base64

    tmp = Path(tempfile.mkdtemp(prefix="inkq-burst-api-"))
    box = Box(tmp, BURST_USERS, None)
    try:
        body = {"operation": "stencil", "engine": "gemini", "image": base64.b64encode(image).decode()}
        _, latencies, _ = submit_all(box.api.url, [f"tok-{i}" for i in range(BURST_USERS)], body, client)
        server = box.server_ms()
    finally:
        box.close()
    return {"submit_p50": _p(latencies, 50) * 1000, "submit_p99": _p(latencies, 99) * 1000,
            "server_p50": _p(server, 50), "server_p99": _p(server, 99)}


def idle_default() -> float:
    tmp = Path(tempfile.mkdtemp(prefix="inkq-idle-"))
    box = Box(tmp, 1, {})
    try:
        time.sleep(5)
        return statistics.median(box.pss() for _ in range(3))
    finally:
        box.close()


def local(image: bytes) -> dict:
    import base64

    tmp = Path(tempfile.mkdtemp(prefix="inkq-local-"))
    box = Box(tmp, LOCAL_USERS, {})
    try:
        body = {"operation": "stencil", "engine": "local", "image": base64.b64encode(image).decode()}
        first = time.time()
        submitted, _, _ = submit_all(box.api.url, [f"tok-{i}" for i in range(LOCAL_USERS)], body)
        ended = wait_results(box, submitted, timeout=900)
        done = sum(box.client.hget(f"rq:job:{j}", "status") == b"finished" for j in submitted)
    finally:
        box.close()
    took = max(ended.values()) - first
    return {"done": done, "n": len(submitted), "took": took, "rate": len(ended) / took}


def engine_alone(image: bytes, runs: int = ENGINE_RUNS) -> dict:
    """The same stencil straight through the engine (`tasks.jobs.local_stencil`: decode, stencil, PNG) in
    as many processes as the service's CPU pool: no API, Redis, queue or store. jobs/s."""
    from concurrent.futures import ProcessPoolExecutor

    from tasks.runtime import cpu

    processes = cpu.size()
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_engine_once, [image] * processes))  # each process imports the stack first
        started = time.perf_counter()
        list(pool.map(_engine_once, [image] * runs))
        took = time.perf_counter() - started
    return {"processes": processes, "n": runs, "took": took, "rate": runs / took}


def _engine_once(image: bytes) -> int:
    from tasks.core.progress import silent
    from tasks.core.settings import WorkerSettings
    from tasks.jobs import local_stencil

    png, _, _ = local_stencil({"params": {}}, image, WorkerSettings.from_env({}), silent)
    return len(png)


def main() -> int:
    from tests.conftest import photo

    upload = photo((480, 480))  # about 60 KB, as the uploads
    small = photo((256, 256))

    def check(ok, text):
        print(f"  {'PASS' if ok else 'FAIL'}: {text}")
    if "burst" in PARTS:
        burst_part(upload, check)
    if "idle" in PARTS:
        idle = idle_default()
        print(f"idle worker service at the default concurrency (5/3/3/10/2): {idle:.0f} MB")
        check(idle <= 300, f"idle PSS {idle:.0f} MB <= 300 MB")
        print()
    if "local" in PARTS:
        print(f"local engine: {LOCAL_USERS} users, one small stencil each ({len(small) // 1024} KB, 256x256), "
              "default concurrency")
        service = local(small)
        alone = engine_alone(small)
        print(f"  the service  {service['done']}/{service['n']} in {service['took']:.1f} s: "
              f"{service['rate']:.2f} jobs/s")
        print(f"  engine alone {alone['n']} runs in {alone['processes']} processes in {alone['took']:.1f} s: "
              f"{alone['rate']:.2f} jobs/s")
        print(f"  the service at {service['rate'] / alone['rate']:.2f}x the engine alone (same run)")
        check(service["done"] == service["n"], f"all {service['n']} complete")
    return 0


def burst_part(upload: bytes, check) -> None:
    print(f"burst: {BURST_USERS} users, one Gemini stencil each ({len(upload) // 1024} KB upload), "
          f"CONCURRENCY_STENCIL=100, fake Gemini {LATENCY_S:g} s, {len(fg.big_png(1_200_000)) / 1e6:.1f} MB PNG")
    client = "node" if shutil.which("node") else "python"
    print(f"load client: {client} ({CLIENTS} connections)")
    alone = submit_alone(upload)
    alone_python = submit_alone(upload, "python") if client == "node" else None
    t = burst(upload)
    yielded = burst(upload, yielding=True)
    print(f"{'done':>9} {'drain s':>8} {'ttr p50':>8} {'ttr p95':>8} {'submit p50':>11} {'submit p99':>11} "
          f"{'PSS peak':>9} {'PSS idle':>9} {'calls':>6}")
    print(f"{t['done']:>4}/{t['n']:<4} {t['drain']:8.1f} {t['p50']:8.1f} {t['p95']:8.1f} "
          f"{t['submit_p50']:9.0f}ms {t['submit_p99']:9.0f}ms {t['pss_peak']:7.0f}MB {t['pss_idle']:7.0f}MB "
          f"{t['calls']:>6}")
    print("submit latency, client / the API's own time (access log), p50 and p99:")
    print(f"  API alone, no workers  {alone['submit_p50']:5.0f} / {alone['server_p50']:4.0f} ms   "
          f"{alone['submit_p99']:5.0f} / {alone['server_p99']:4.0f} ms")
    if alone_python:
        print(f"  API alone, Python client {alone_python['submit_p50']:3.0f} / {alone_python['server_p50']:4.0f} ms   "
              f"{alone_python['submit_p99']:5.0f} / {alone_python['server_p99']:4.0f} ms   (32 threads of requests)")
    print(f"  burst                  {t['submit_p50']:5.0f} / {t['server_p50']:4.0f} ms   "
          f"{t['submit_p99']:5.0f} / {t['server_p99']:4.0f} ms")
    print(f"  burst, workers yielding {yielded['submit_p50']:5.0f} / {yielded['server_p50']:4.0f} ms   "
          f"{yielded['submit_p99']:5.0f} / {yielded['server_p99']:4.0f} ms   (diagnostic: worker service at nice 19)")
    print("CPU-s used while the submissions ran (wall s; API, worker service, Redis, fake provider, load client):")
    for name, r in (("burst", t), ("burst, workers yielding", yielded)):
        w = r["window"]
        print(f"  {name:24} {w['wall']:4.2f} s: API {w['api']:.2f}, workers {w['workers']:.2f}, Redis {w['redis']:.2f}, "
              f"provider {w['provider']:.2f}, client {w['client']:.2f}")
    errors = [e for e, _ in t["eta_errors"] if e is not None]
    close = sum(1 for e, real in t["eta_errors"] if e is not None and e <= max(5.0, 0.25 * real))
    share = close / len(t["eta_errors"]) if t["eta_errors"] else 0.0
    print(f"etaS of each 202 beside the real time to result: {len(errors)}/{len(t['eta_errors'])} given; |error| "
          f"p50 {_p(errors, 50):.1f} s, p90 {_p(errors, 90):.1f} s, max {max(errors):.1f} s; within 25% or 5 s: "
          f"{close}/{len(t['eta_errors'])}" if errors else "etaS: none given")
    if errors:
        print("  |error| s     " + "  ".join(f"<={b:g}: {sum(e <= b for e in errors)}" for b in (1, 2, 5, 10, 20)))
    check(t["done"] == t["n"], f"all {t['n']} complete")
    check(share >= 0.8, f"etaS within 25% or 5 s of the real time to result for {share:.0%} of jobs (>= 80%)")
    check(t["drain"] <= 45, f"drain {t['drain']:.1f} s <= 45 s")
    check(t["p95"] <= 40, f"time-to-result p95 {t['p95']:.1f} s <= 40 s")
    check(t["submit_p99"] <= 100, f"submit p99 {t['submit_p99']:.0f} ms <= 100 ms")
    check(t["pss_peak"] <= 400, f"worker PSS with 100 calls in flight {t['pss_peak']:.0f} MB <= 400 MB")
    print()


if __name__ == "__main__":
    sys.exit(main())
