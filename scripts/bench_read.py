"""The read path under load: inkq beside the naive baseline (scripts/naive_api.py), same run.

For each service, on a redis-server of its own and with `hey` on the same box:
1. saturation at 64 connections, 5 s: POST /generate of a 100 KB photo as JSON, then GET /status;
2. paced polling: the seed's 5,000 users polling every 2 s (50 connections x 50 q/s = 2,500/s), 10 s;
3. the seed's 500 users with the workers running jobs: 50 submissions/s and 250 polls/s at once, 10 s,
   from one-connection hey processes started spread over the poll period (independent users), then
   again from one hey per kind whose connections fire in lockstep (bursts), for comparison;
4. 2,000 event streams over 40 jobs: first-event and terminal-event delays, ordinary GET /status
   meanwhile, the API's memory (PSS) and threads; opened over 2 s by one user, then all at the same
   instant by 40 users (one job each, 50 streams on it), with where the opens waited (connect, status
   line, first event), the kernel's listen-queue overflows and the Redis commands per open;
5. the whole stack's PSS after the load.
Targets are checked on ratios or on figures taken in this same run; the script always exits 0.
Usage: python scripts/bench_read.py [--quick] [--streams-only]
  --quick: shorter runs, 500 streams; --streams-only: inkq's event streams only (both openings), no
  naive baseline and no other load.
The bench's environment raises MAX_STREAMS_PER_USER (50 streams per job, one user per job or one
user in all), RATE_LIMIT and MAX_INFLIGHT_PER_USER; READ_RATE_LIMIT keeps its default.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_api import photo_of_size  # noqa: E402
from tests.servers import (GunicornApi, RedisServer, Workers, free_port, pss_mb, process_tree,  # noqa: E402
                           live_workers_expected, thread_count, wait_until)
from tests.servers import cpu_seconds as cpu_of  # noqa: E402
from tests.streams import Stream, run as follow_streams  # noqa: E402

TOKEN = "bench-token"
QUICK = "--quick" in sys.argv
STREAMS_ONLY = "--streams-only" in sys.argv
SAT_S, PACED_S = (3, 5) if QUICK else (5, 10)
STREAM_JOBS, PER_JOB = (20, 25) if QUICK else (40, 50)
# the streams opened all at once come from one user per job, as from many people's pages
STREAM_TOKENS = [f"bench-stream-{i}" for i in range(STREAM_JOBS)]
# ... from this many client processes: one asyncio loop needs about a second of its own (2 shared cores)
# to start 2,000 connects before it sees the first one complete, which the single-client figure includes
STREAM_CLIENTS = 4
# ... and from one Node.js event loop (scripts/streams_load.mjs), which starts 2,000 connects in a few ms
NODE = bool(shutil.which("node"))
# inkq's workers here share the box with the API: WORKER_NICE as `make run` sets it (BENCH_WORKER_NICE=0: off)
WORKER_NICE = os.environ.get("BENCH_WORKER_NICE", "10")


# ---------------------------------------------------------------- hey
def hey(url: str, seconds: float, conns: int, rate: float | None = None, body: Path | None = None,
        token: str = TOKEN) -> dict:
    """Run hey; requests/s, latency percentiles (ms), status counts and errors."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(conns), "-H", f"Authorization: Bearer {token}"]
    if rate:
        cmd += ["-q", str(rate)]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 120).stdout
    found = {"rps": 0.0, "codes": {}, "errors": 0}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            found["rps"] = float(line.split()[1])
        elif m := re.match(r"(\d+)% in ([\d.]+) secs", line):
            found[f"p{m.group(1)}"] = float(m.group(2)) * 1000
        elif m := re.match(r"\[(\d+)\]\s+(\d+) responses", line):
            found["codes"][int(m.group(1))] = int(m.group(2))
        elif m := re.match(r"\[(\d+)\]\s+Get|\[(\d+)\]\s+Post", line):
            found["errors"] += int(m.group(1) or m.group(2))
    found["bad"] = found["errors"] + sum(n for code, n in found["codes"].items() if code >= 400)
    return found


def spread(url: str, seconds: float, users: int, rate: float, body: Path | None = None) -> dict:
    """Independent users: `users` hey processes of one connection at `rate` q/s each, their starts spread
    evenly over one period, so requests arrive spread out as from people polling on their own clocks.

    One hey with `-c users -q rate` fires all its connections on the same tick: bursts of `users`
    requests at once, every 1/rate s, which is not how 500 people's browsers poll. Latencies come from
    every request (`-o csv`), not from averaging each process's percentiles.
    """
    cmd = ["hey", "-z", f"{seconds}s", "-c", "1", "-q", str(rate), "-o", "csv", "-H", f"Authorization: Bearer {TOKEN}"]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    procs = []
    for _ in range(users):
        procs.append(subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, text=True))
        time.sleep(1.0 / (rate * users))
    latencies, codes = [], {}
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        for line in out.splitlines()[1:]:
            fields = line.split(",")
            if len(fields) >= 7:
                latencies.append(float(fields[0]) * 1000)
                codes[int(fields[6])] = codes.get(int(fields[6]), 0) + 1
    found = {"rps": len(latencies) / seconds, "codes": codes,
             "bad": sum(n for code, n in codes.items() if code >= 400)}
    if latencies:
        found.update({f"p{pct}": _p(latencies, pct) for pct in (50, 99)})
    return found


def mixed_load(svc: "Service", body_file: Path, job_id: str, load) -> dict:
    """The seed's 500 users at once: 50 submissions/s (5 x 10 q/s) and 250 polls/s (25 x 10 q/s)."""
    mixed = {}
    threads = [threading.Thread(target=lambda: mixed.__setitem__("submit", load(
                   svc.url + "/generate", PACED_S, 5, 10, body_file))),
               threading.Thread(target=lambda: mixed.__setitem__("poll", load(
                   f"{svc.url}/status/{job_id}", PACED_S, 25, 10)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return mixed


def lockstep(url: str, seconds: float, conns: int, rate: float, body: Path | None = None) -> dict:
    return hey(url, seconds, conns, rate=rate, body=body)


WRK_SCRIPT = """
local ids = {}
for line in io.lines(os.getenv("INKQ_IDS")) do ids[#ids + 1] = line end
local i = math.random(#ids)
request = function()
  i = i % #ids + 1
  return wrk.format("GET", "/status/" .. ids[i], {["Authorization"] = "Bearer " .. os.getenv("INKQ_TOKEN")})
end
"""


def wrk_many(url: str, ids: list[str], seconds: float, tmp: Path) -> float:
    """Requests/s of GET /status spread over many different jobs (hey polls one URL; wrk rotates)."""
    (tmp / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp / "many.lua").write_text(WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(tmp / "many.lua"), url],
                         capture_output=True, text=True, timeout=seconds + 60,
                         env={**os.environ, "INKQ_IDS": str(tmp / "ids.txt"), "INKQ_TOKEN": TOKEN}).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1]) if not bad else float("nan")
    return float("nan")


# ---------------------------------------------------------------- the two services
class Service:
    """One of the two services under test, with its own Redis."""

    def __init__(self, name: str, tmp: Path):
        self.name, self.tmp = name, tmp
        self.redis = RedisServer()
        keys = ",".join([f"{TOKEN}:bench"] + [f"{token}:streamer-{i}" for i, token in enumerate(STREAM_TOKENS)])
        self.env = {"REDIS_URL": self.redis.url, "API_KEYS": keys, "SECRET_KEY": "b" * 32,
                    "RATE_LIMIT": "100000000/minute", "MAX_INFLIGHT_PER_USER": "100000000", "MAX_STREAMS_PER_USER": "100000",
                    "QUEUE_MAX_DEPTH": "100000000", "ACCESS_LOG": "", "LOG_FORMAT": "text", "GEMINI_API_KEY": "",
                    "WEB_CONCURRENCY": "2", "CONCURRENCY_STENCIL": "5"}
        self.workers_proc = None
        if name == "inkq":
            # API and workers share the bench's 2 cores, set up as the README advises for one box
            self.env["WORKER_NICE"] = WORKER_NICE
            self.api = GunicornApi(self.env, str(tmp / "inkq-api.log"))
            self.url, self.port, self.api_pid = self.api.url, self.api.port, self.api.proc.pid
        else:
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self.api = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{self.port}",
                 "--backlog", "4096", "scripts.naive_api:app"], cwd=ROOT, env={**os.environ, **self.env},
                stdout=open(tmp / "naive-api.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            self.api_pid = self.api.pid
            wait_until(lambda: _up(self.url), timeout=60, what="the naive API")

    def start_workers(self) -> None:
        if self.name == "inkq":
            self.workers_proc = Workers(self.env, str(self.tmp / "inkq-workers.log"))
            self.workers_proc.wait_ready(self.redis_client(), live_workers_expected(self.env))
        else:  # the same 5 stencil workers, plain rq
            rq = os.path.join(os.path.dirname(sys.executable), "rq")
            self.workers_proc = subprocess.Popen(
                [rq, "worker-pool", "stencil-generation", "-n", "5", "--url", self.redis.url,
                 "--serializer", "rq.serializers.JSONSerializer"], cwd=ROOT, env={**os.environ, **self.env},
                stdout=open(self.tmp / "naive-workers.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            wait_until(lambda: len(self.redis_client().smembers("rq:workers")) >= 5, timeout=60,
                       what="naive workers")

    def workers_pid(self) -> int | None:
        proc = self.workers_proc.proc if isinstance(self.workers_proc, Workers) else self.workers_proc
        return proc.pid if proc is not None else None

    def redis_client(self):
        import redis

        return redis.Redis.from_url(self.redis.url)

    def flush(self) -> None:
        self.redis_client().flushall()

    def api_pss(self) -> float:
        return pss_mb(process_tree(self.api_pid))

    def stack_pss(self) -> float:
        pids = process_tree(self.api_pid)
        if self.workers_pid():
            pids += process_tree(self.workers_pid())
        return pss_mb(pids)

    def api_threads(self) -> int:
        return sum(thread_count(pid) for pid in process_tree(self.api_pid))

    def stop(self) -> None:
        for proc in (self.workers_proc, self.api):
            if isinstance(proc, (Workers, GunicornApi)):
                proc.stop()
            elif proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.redis.stop()


def _up(url: str) -> bool:
    try:
        return requests.get(url + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def submit(url: str, body: dict, token: str = TOKEN) -> str:
    response = requests.post(url + "/generate", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return response.json()["jobId"]


# ---------------------------------------------------------------- the measurements
def measure(svc: Service, body_file: Path, body: dict) -> dict:
    out = {}
    out["submit"] = hey(svc.url + "/generate", SAT_S, 64, body=body_file)
    svc.flush()
    job_id = submit(svc.url, body)
    out["status"] = hey(f"{svc.url}/status/{job_id}", SAT_S, 64)
    many = [job_id] + [submit(svc.url, body) for _ in range(499)]
    out["status_many"] = wrk_many(svc.url, many, SAT_S, svc.tmp)
    if svc.name == "inkq":  # the same over a second API on this Redis with the status cache off
        plain = GunicornApi({**svc.env, "STATUS_CACHE_S": "0"}, str(svc.tmp / "inkq-api-nocache.log"))
        try:
            out["status_many_nocache"] = wrk_many(plain.url, many, SAT_S, svc.tmp)
            out["status_nocache"] = hey(f"{plain.url}/status/{job_id}", SAT_S, 64)
        finally:
            plain.stop()
    out["paced"] = hey(f"{svc.url}/status/{job_id}", PACED_S, 50, rate=50)
    svc.flush()

    svc.start_workers()
    job_id = submit(svc.url, body)
    out["mixed"] = mixed_load(svc, body_file, job_id, spread)
    out["mixed_lockstep"] = mixed_load(svc, body_file, job_id, lockstep)
    # drop what is still waiting and let the running jobs end, so the streams start on idle workers
    client = svc.redis_client()
    client.delete("rq:queue:stencil-generation")
    time.sleep(5)
    out["streams"] = streams(svc, body)
    time.sleep(2)
    out["streams_at_once"] = streams(svc, body, spread_s=0.0, tokens=STREAM_TOKENS)
    time.sleep(2)
    if svc.name == "inkq":  # the baseline's sync workers are measured once, with one client
        out["streams_at_once_clients"] = streams(svc, body, spread_s=0.0, tokens=STREAM_TOKENS, clients=STREAM_CLIENTS)
        time.sleep(2)
        if NODE:
            out["streams_at_once_node"] = streams(svc, body, spread_s=0.0, tokens=STREAM_TOKENS, node=STREAM_CLIENTS)
            time.sleep(2)
    out["stack_pss"] = svc.stack_pss()
    return out


def _follow_from(port: int, watched: list[Stream], timeout: float, start_at: float) -> list[Stream]:
    """One client process's share of the streams, all opened at `start_at`."""
    time.sleep(max(0.0, start_at - time.time()))
    follow_streams("127.0.0.1", port, watched, timeout, 0.0)
    return watched


def follow_in_processes(port: int, watched: list[Stream], timeout: float, clients: int) -> None:
    """Open every stream at the same instant from `clients` processes; the results land in `watched`."""
    import multiprocessing

    shares = [watched[i::clients] for i in range(clients)]
    start_at = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        done = pool.starmap(_follow_from, [(port, share, timeout, start_at) for share in shares])
    for share, result in zip(shares, done):
        for mine, theirs in zip(share, result):
            mine.__dict__.update(theirs.__dict__)


def follow_with_node(port: int, watched: list[Stream], timeout: float, processes: int = 1) -> None:
    """Open every stream in the same instant from Node.js event loops (scripts/streams_load.mjs)."""
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp, "plan.json")
        plan.write_text(json.dumps({"host": "127.0.0.1", "port": port, "timeoutS": timeout,
                                    "startAt": time.time() + 1.0, "streams": [[s.job_id, s.token] for s in watched]}))
        out = subprocess.run(["node", str(ROOT / "scripts" / "streams_load.mjs"), str(plan), str(processes)],
                             capture_output=True,
                             text=True, timeout=timeout + 60, check=True).stdout
    for stream, seen in zip(watched, json.loads(out)):
        stream.opened, stream.connected, stream.answered = seen["opened"], seen["connected"], seen["answered"]
        stream.first_event, stream.ended, stream.http_status = seen["firstEvent"], seen["ended"], seen["httpStatus"]
        stream.error, stream.events = seen["error"], [seen["last"]] if seen["last"] else []


def streams(svc: Service, body: dict, spread_s: float = 2.0, tokens: list[str] | None = None,
            clients: int = 1, node: int = 0) -> dict:
    """2,000 streams over 40 jobs, opened over `spread_s` (0: all at the same instant) while the jobs run;
    ordinary polls meanwhile. `tokens`: one user per job (default: every job the bench user's).
    `clients` > 1: opened at once from that many client processes (what happens meanwhile, the peak
    of open streams and the CPU until the first events, is then not seen)."""
    tokens = tokens or [TOKEN] * STREAM_JOBS
    ids = [submit(svc.url, body, token) for token in tokens]
    watched = [Stream(job_id, token) for job_id, token in zip(ids, tokens) for _ in range(PER_JOB)]
    timeout = 120 if svc.name == "inkq" else 60
    overflows, commands = listen_overflows(), redis_calls(svc)
    if node:
        follower = threading.Thread(target=follow_with_node, args=(svc.port, watched, timeout, node))
    elif clients > 1:
        follower = threading.Thread(target=follow_in_processes, args=(svc.port, watched, timeout, clients))
    else:
        follower = threading.Thread(target=follow_streams, args=("127.0.0.1", svc.port, watched, timeout, spread_s))
    follower.start()
    polls = {}
    poller = threading.Thread(target=lambda: polls.update(hey(f"{svc.url}/status/{ids[0]}", 8, 10, rate=10, token=tokens[0])))
    time.sleep(1.0)
    poller.start()
    peak_pss, peak_threads, open_now = 0.0, 0, 0
    cpu_start, cpu_opening = cpu_seconds(svc), None
    while follower.is_alive():
        peak_pss = max(peak_pss, svc.api_pss())
        peak_threads = max(peak_threads, svc.api_threads())
        open_now = max(open_now, sum(1 for s in watched if s.first_event and not s.ended and not s.error))
        if cpu_opening is None and all(s.first_event or s.error for s in watched):
            cpu_opening = {k: round(v - cpu_start[k], 2) for k, v in cpu_seconds(svc).items()}
        follower.join(0.5)
    poller.join()
    overflows, commands = listen_overflows() - overflows, redis_calls(svc, commands)
    firsts = [s.first_event - s.opened for s in watched if s.first_event]
    waits = {  # where the opens waited: TCP connect, then the status line, then the first event
        "connect": [s.connected - s.opened for s in watched if s.connected],
        "status_line": [s.answered - s.connected for s in watched if s.answered and s.connected],
        "first_after_status": [s.first_event - s.answered for s in watched if s.first_event and s.answered]}
    codes: dict = {}
    for s in watched:
        codes[s.http_status] = codes.get(s.http_status, 0) + 1
    lags = []
    for s in watched:
        if s.ended and s.last.get("endedAt"):
            ended_at = _parse_iso(s.last["endedAt"])
            lags.append(max(0.0, s.ended - ended_at))
    return {"opened": len(watched), "first": len(firsts), "ended": sum(1 for s in watched if s.ended),
            "errors": sum(1 for s in watched if s.error), "first_p50": _p(firsts, 50), "first_p99": _p(firsts, 99),
            "first_max": max(firsts or [float("nan")]), "end_lag_max": max(lags or [0]),
            "end_lag_p99": _p(lags, 99), "open_peak": open_now, "polls": polls, "pss": peak_pss,
            "threads": peak_threads, "codes": codes, "first_error": next((s.error for s in watched if s.error), None),
            "waits": {k: {"p50": _p(v, 50), "p99": _p(v, 99), "max": max(v or [float("nan")])} for k, v in waits.items()},
            "cpu_opening": cpu_opening, "listen_overflows": overflows, "redis_calls": commands,
            "redis_calls_per_stream": {
                k: round(n / len(watched), 2) for k, n in sorted(commands.items(), key=lambda kv: -kv[1])}}


def cpu_seconds(svc: Service) -> dict:
    """CPU seconds used so far by the API's processes, the workers', Redis and this script (the client),
    and the wall clock, to see who had the cores while the streams opened."""
    times = os.times()
    workers = svc.workers_pid()
    return {"wall": time.monotonic(), "api": cpu_of(process_tree(svc.api_pid)),
            "workers": cpu_of(process_tree(workers)) if workers else 0.0, "redis": cpu_of([svc.redis.proc.pid]),
            "bench": times.user + times.system}


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (TcpExtListenOverflows
    and ListenDrops, from /proc/net/netstat; -1 when unreadable)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            return row.get("ListenOverflows", 0) + row.get("ListenDrops", 0)
    return -1


def redis_calls(svc: Service, before: dict | None = None) -> dict:
    """Redis commands served so far by name (from INFO commandstats), or since `before`."""
    now = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in svc.redis_client().info("commandstats").items()}
    if before is None:
        return now
    return {name: n - before.get(name, 0) for name, n in now.items() if n - before.get(name, 0) > 0}


def streams_report(label: str, s: dict) -> None:
    """The figures of one streams measurement, with where the opens waited."""
    print(f"  {label}: {s['first']:,} of {s['opened']:,} got a first event, {s['ended']:,} saw their job end, "
          f"{s['errors']} errors (first: {s['first_error']}), statuses {s['codes']}")
    print(f"    first event p50 {s['first_p50'] * 1000:.0f} ms, p99 {s['first_p99'] * 1000:.0f} ms, "
          f"max {s['first_max'] * 1000:.0f} ms; terminal event after the job ended, max {s['end_lag_max'] * 1000:.0f} ms")
    for part, w in s["waits"].items():
        print(f"    {part:<20} p50 {w['p50'] * 1000:7.1f} ms  p99 {w['p99'] * 1000:7.1f} ms  max {w['max'] * 1000:7.1f} ms")
    print(f"    until every stream had its first event, CPU seconds used (wall: elapsed): {s['cpu_opening']}")
    print(f"    listen queue overflows and drops: {s['listen_overflows']}; Redis commands per stream "
          f"(open to end): {s['redis_calls_per_stream']}")


def _parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _p(values, pct) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# ---------------------------------------------------------------- report
def report(naive: dict, inkq: dict) -> None:
    def row(label, n, i, unit, better="higher"):
        ratio = (i / n if better == "higher" else n / i) if n and i else float("nan")
        print(f"  {label:<46} naive {n:>9.1f} {unit:<5} inkq {i:>9.1f} {unit:<5} x{ratio:.2f}")

    checks = []

    def check(ok, text):
        checks.append((ok, text))

    print("Saturation, 64 connections (requests/s):")
    row("POST /generate, 100 KB photo as JSON", naive["submit"]["rps"], inkq["submit"]["rps"], "/s")
    row("GET /status, one job (hey)", naive["status"]["rps"], inkq["status"]["rps"], "/s")
    row("GET /status, 500 waiting jobs in turn (wrk)", naive["status_many"], inkq["status_many"], "/s")
    row("  the same, inkq's status cache off", naive["status_many"], inkq["status_many_nocache"], "/s")
    row("GET /status, one job, status cache off", naive["status"]["rps"], inkq["status_nocache"]["rps"], "/s")
    check(inkq["submit"]["rps"] >= 2 * naive["submit"]["rps"], "submit >= 2x naive")
    check(inkq["status"]["rps"] >= 3 * naive["status"]["rps"], "status >= 3x naive (one job, as the issue measured)")
    check(inkq["status_many"] >= 3 * naive["status_many"], "status >= 3x naive (500 waiting jobs in turn)")
    check(inkq["status_nocache"]["rps"] >= 3 * naive["status"]["rps"], "status >= 3x naive with the status cache off")
    print("Paced, the seed's 5,000 pollers (50 connections x 50 q/s = 2,500/s asked):")
    row("served per second", naive["paced"]["rps"], inkq["paced"]["rps"], "/s")
    row("p99 latency", naive["paced"].get("p99", 0), inkq["paced"].get("p99", 0), "ms", "lower")
    row("errors and non-2xx", naive["paced"]["bad"], inkq["paced"]["bad"], "")
    check(inkq["paced"]["rps"] >= 2400 and inkq["paced"].get("p99", 1e9) <= 50 and inkq["paced"]["bad"] == 0,
          "2,500 polls/s paced at p99 <= 50 ms, no errors")
    print("The seed's 500 users with workers running (50 submissions/s + 250 polls/s, users on their own clocks):")
    for key in ("submit", "poll"):
        for pct in ("p99", "p50"):
            row(f"{key} {pct}", naive["mixed"][key].get(pct, 0), inkq["mixed"][key].get(pct, 0), "ms", "lower")
    row("errors and non-2xx", naive["mixed"]["poll"]["bad"] + naive["mixed"]["submit"]["bad"],
        inkq["mixed"]["poll"]["bad"] + inkq["mixed"]["submit"]["bad"], "")
    print("  the same load from one hey per kind, all connections firing together every 100 ms (bursts):")
    for key in ("submit", "poll"):
        row(f"  {key} p99, lockstep", naive["mixed_lockstep"][key].get("p99", 0),
            inkq["mixed_lockstep"][key].get("p99", 0), "ms", "lower")
    check(inkq["mixed"]["submit"].get("p99", 1e9) <= 50, "busy: submit p99 <= 50 ms")
    check(inkq["mixed"]["poll"].get("p99", 1e9) <= 20, "busy: poll p99 <= 20 ms")
    check(inkq["mixed"]["poll"]["bad"] + inkq["mixed"]["submit"]["bad"] == 0, "busy: no errors")
    n, i = naive["streams"], inkq["streams"]
    print(f"{i['opened']:,} event streams over {STREAM_JOBS} running jobs, opened within 2 s:")
    row("streams that got a first event", n["first"], i["first"], "")
    row("streams that saw their job end", n["ended"], i["ended"], "")
    row("most open at once", n["open_peak"], i["open_peak"], "")
    row("first event p99", n["first_p99"] * 1000, i["first_p99"] * 1000, "ms", "lower")
    row("terminal event after the job ended, max", n["end_lag_max"] * 1000, i["end_lag_max"] * 1000, "ms", "lower")
    row("ordinary GET /status meanwhile, p95 (nan: none answered)", n["polls"].get("p95", float("nan")),
        i["polls"].get("p95", float("nan")), "ms", "lower")
    row("API PSS, peak", n["pss"], i["pss"], "MB", "lower")
    row("API threads, peak", n["threads"], i["threads"], "", "lower")
    n1, i1 = naive["streams_at_once"], inkq["streams_at_once"]
    print(f"The same {i1['opened']:,} streams opened at the same instant, by {STREAM_JOBS} users (one job each):")
    row("streams that got a first event", n1["first"], i1["first"], "")
    row("first event p99", n1["first_p99"] * 1000, i1["first_p99"] * 1000, "ms", "lower")
    row("first event max", n1["first_max"] * 1000, i1["first_max"] * 1000, "ms", "lower")
    print("  inkq's opens in detail:")
    streams_report("opened within 2 s", i)
    streams_report("opened at once", i1)
    i2 = inkq["streams_at_once_clients"]
    streams_report(f"opened at once from {STREAM_CLIENTS} client processes", i2)
    check(i["ended"] == i["opened"] and i["errors"] == 0, "every stream saw its job end")
    check(i["first_p99"] <= 1.0, "first event p99 <= 1 s")
    check(i1["ended"] == i1["opened"] and i1["errors"] == 0, "every stream opened at once saw its job end")
    check(i1["first_p99"] <= 1.0, "first event p99 <= 1 s, every stream opened at once")
    check(i2["ended"] == i2["opened"] and i2["errors"] == 0 and i2["first_p99"] <= 1.0,
          f"the same from {STREAM_CLIENTS} client processes: first event p99 <= 1 s, every stream saw its job end")
    if "streams_at_once_node" in inkq:
        i3 = inkq["streams_at_once_node"]
        streams_report(f"opened at once from {STREAM_CLIENTS} Node.js processes (scripts/streams_load.mjs)", i3)
        check(i3["ended"] == i3["opened"] and i3["errors"] == 0 and i3["first_p99"] <= 1.0,
              f"the same from {STREAM_CLIENTS} Node.js processes: first event p99 <= 1 s, every stream saw its job end")
    check(i["end_lag_max"] <= 1.0, "terminal event <= 1 s after the job ended")
    check(i["polls"].get("p95", 1e9) <= 200, "ordinary requests p95 <= 200 ms meanwhile")
    check(i["pss"] <= 800, "API PSS <= 800 MB")
    check(i["threads"] < 40, "no thread held per stream")
    print("After the load:")
    row("whole stack PSS (API + workers)", naive["stack_pss"], inkq["stack_pss"], "MB", "lower")
    check(inkq["stack_pss"] <= 1536, "whole stack PSS <= 1.5 GB")
    for ok, text in checks:
        print(f"  {'PASS' if ok else 'FAIL'}: {text}")


def streams_only(tmp: Path, body: dict) -> int:
    """`--streams-only`: inkq's event streams, opened over 2 s and then all at once, on running workers."""
    svc = Service("inkq", tmp)
    try:
        svc.start_workers()
        time.sleep(2)
        runs = {"spread": {}, "at_once": {"spread_s": 0.0, "tokens": STREAM_TOKENS},
                "at_once_clients": {"spread_s": 0.0, "tokens": STREAM_TOKENS, "clients": STREAM_CLIENTS},
                "at_once_node": {"spread_s": 0.0, "tokens": STREAM_TOKENS, "node": 1},
                "at_once_nodes": {"spread_s": 0.0, "tokens": STREAM_TOKENS, "node": STREAM_CLIENTS}}
        chosen = os.environ.get("BENCH_STREAM_MODES", ",".join(runs)).split(",")
        results = {}
        for key in chosen:
            if key.startswith("at_once_node") and not NODE:
                continue
            results[key] = streams(svc, body, **runs[key])
            time.sleep(2)
    finally:
        svc.stop()
    print(f"{STREAM_JOBS * PER_JOB:,} event streams over {STREAM_JOBS} running jobs (inkq only, WORKER_NICE={WORKER_NICE}; "
          f"logs in {tmp}):")
    labels = {"spread": "opened within 2 s, one user", "at_once": f"opened at once, {STREAM_JOBS} users",
              "at_once_clients": f"opened at once, {STREAM_JOBS} users, {STREAM_CLIENTS} client processes",
              "at_once_node": f"opened at once, {STREAM_JOBS} users, one Node.js client",
              "at_once_nodes": f"opened at once, {STREAM_JOBS} users, {STREAM_CLIENTS} Node.js processes"}
    for key, result in results.items():
        streams_report(labels[key], result)
    for key, text in (("spread", "opened within 2 s"), ("at_once", "opened at once"),
                      ("at_once_clients", f"opened at once from {STREAM_CLIENTS} clients"),
                      ("at_once_node", "opened at once from one Node.js client"),
                      ("at_once_nodes", f"opened at once from {STREAM_CLIENTS} Node.js processes")):
        if key not in results:
            continue
        s = results[key]
        ok = s["first_p99"] <= 1.0 and s["ended"] == s["opened"] and s["errors"] == 0
        print(f"  {'PASS' if ok else 'FAIL'}: {text}: first event p99 <= 1 s, every stream saw its job end")
    (tmp / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="inkq-bench-read-"))
    body = {"image": base64.b64encode(photo_of_size(100)).decode(), "engine": "local"}
    body_file = tmp / "body.json"
    body_file.write_text(json.dumps(body))
    if STREAMS_ONLY:
        return streams_only(tmp, body)
    results = {}
    for name in ("naive", "inkq"):
        svc = Service(name, tmp)
        try:
            results[name] = measure(svc, body_file, {**body, "engine": "local"} if name == "inkq" else body)
        finally:
            svc.stop()
        print(f"({name} measured; logs in {tmp})", flush=True)
    report(results["naive"], results["inkq"])
    (tmp / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
