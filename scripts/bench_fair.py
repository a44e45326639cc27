"""Benchmark of the fair order (`tasks/core/fairness.py`): light users beside a heavy one, and the cost of a
status read beside the queue's length.

1. The issue's scenario, full size: one user queues HEAVY_JOBS (50) Gemini stencils, the fake Gemini
   answering after 6 s, CONCURRENCY_STENCIL=5; one second later LIGHT_USERS (10) other users queue one
   each, at once. Reported: the queuePosition and etaS each light user's 202 gave, the highest
   queuePosition any of their status reads showed, their time to result (submission -> endedAt), and the
   heavy user's completions. Targets: positions <= 11, every light user's result within 25 s, all 50 of the
   heavy user's complete.
2. A status read with 10 and with 10,000 waiting jobs of 100 users (the probe job last in its queue's fair
   order, the status cache off): Redis time per read (the script's usec per call) and the client's p50/p99 over READS reads.
   Target: the read does not grow with the queue (at most 1.5x at 10,000).

Each part starts its own redis-server, the API under gunicorn (scripts/start_api.sh) and, for the first,
one worker service (scripts/start_workers.sh). Exits 0; targets are printed as PASS/FAIL.
BENCH_FAIR_PARTS (fair,read) chooses what runs.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import fakegemini as fg  # noqa: E402
from tests.servers import GunicornApi, RedisServer, Workers, live_workers_expected  # noqa: E402

HEAVY_JOBS = int(os.environ.get("BENCH_FAIR_HEAVY", "50"))
LIGHT_USERS = int(os.environ.get("BENCH_FAIR_LIGHT", "10"))
LATENCY_S = float(os.environ.get("BENCH_GEMINI_LATENCY_S", "6"))
CONCURRENCY = 5
LONG_QUEUE = 10_000
READS = 1000
ROUNDS = 5
PARTS = tuple(os.environ.get("BENCH_FAIR_PARTS", "fair,read").split(","))


def _p(values, pct: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(pct / 100 * (len(values) - 1))))]


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def fair(image: bytes) -> dict:
    import base64

    import redis as redis_lib

    tmp = Path(tempfile.mkdtemp(prefix="inkq-bench-fair-"))
    users = ["heavy", *(f"light{i}" for i in range(LIGHT_USERS))]
    body = {"operation": "stencil", "engine": "gemini", "image": base64.b64encode(image).decode()}
    with fg.OwnProcess(fg.slow(LATENCY_S, fg.ok())) as gemini:
        server = RedisServer()
        api = GunicornApi({"REDIS_URL": server.url, "API_KEYS": ",".join(f"tok-{u}:{u}" for u in users),
                           "SECRET_KEY": "b" * 32, "RATE_LIMIT": "100000/minute", "MAX_INFLIGHT_PER_USER": "100",
                           "GEMINI_API_KEY": "bench-key", "LOG_FORMAT": "text", "LOG_LEVEL": "WARNING"},
                          str(tmp / "api.log"))
        env = {"REDIS_URL": server.url, "GEMINI_API_KEY": "bench-key", "GEMINI_BASE_URL": gemini.url,
               "GEMINI_TIMEOUT_S": "60", "CONCURRENCY_STENCIL": str(CONCURRENCY), "LOG_LEVEL": "WARNING"}
        workers = Workers(env, str(tmp / "workers.log"))
        client = redis_lib.Redis.from_url(server.url)
        try:
            workers.wait_ready(client, live_workers_expected(env), timeout=180)
            session = requests.Session()

            def submit(user: str) -> str:
                response = session.post(api.url + "/generate", json=body, headers={"Authorization": f"Bearer tok-{user}"},
                                        timeout=30)
                assert response.status_code == 202, response.text
                return response.json()["jobId"]

            first = time.time()
            heavy = [submit("heavy") for _ in range(HEAVY_JOBS)]
            time.sleep(1.0)
            lights: dict[str, tuple[str, float, dict]] = {}  # user -> (job id, submitted at, 202 body)
            threads = []
            start_gate = threading.Barrier(LIGHT_USERS)

            def one(user: str) -> None:
                start_gate.wait()
                at = time.time()
                response = requests.post(api.url + "/generate", json=body, timeout=30,
                                         headers={"Authorization": f"Bearer tok-{user}"})
                assert response.status_code == 202, response.text
                lights[user] = (response.json()["jobId"], at, response.json())
            for user in users[1:]:
                threads.append(threading.Thread(target=one, args=(user,)))
                threads[-1].start()
            for thread in threads:
                thread.join()
            seen = {user: [lights[user][2]["queuePosition"]] for user in lights}
            final: dict[str, dict] = {}
            deadline = time.monotonic() + 300
            while len(final) < len(lights) and time.monotonic() < deadline:
                for user, (job_id, _, _) in lights.items():
                    if user in final:
                        continue
                    status = session.get(f"{api.url}/status/{job_id}", headers={"Authorization": f"Bearer tok-{user}"},
                                         timeout=30).json()
                    seen[user].append(status["queuePosition"])
                    if status["status"] in ("completed", "failed", "canceled"):
                        final[user] = status
                time.sleep(0.25)
            heavy_ended = {}
            while len(heavy_ended) < len(heavy) and time.monotonic() < deadline:
                for job_id in heavy:
                    status, ended = client.hmget(f"rq:job:{job_id}", "status", "ended_at")
                    if status in (b"finished", b"failed", b"stopped"):
                        heavy_ended[job_id] = (status, ended)
                time.sleep(0.5)
        finally:
            workers.stop(timeout=60)
            api.stop()
            server.stop()
    ttr = {user: _epoch(final[user]["endedAt"]) - at for user, (_, at, _) in lights.items() if user in final}
    done_heavy = [s for s, _ in heavy_ended.values()].count(b"finished")
    last_heavy = max((_epoch(e.decode().rstrip("Z")[:23] + "Z") for _, e in heavy_ended.values() if e), default=None)
    return {"answers": {user: lights[user][2] for user in lights}, "seen": seen, "ttr": ttr,
            "completed": sum(f["status"] == "completed" for f in final.values()), "n": len(lights),
            "heavy_done": done_heavy, "heavy_drain": (last_heavy - first) if last_heavy else float("nan")}


def read_cost() -> list[dict]:
    """Both queues built first, then ROUNDS rounds of READS reads on each in turn (so a busy box weighs on
    both alike); per queue the median round."""
    import redis as redis_lib

    from api.store import JobStore, new_job_id

    setups = []
    try:
        for waiting in (10, LONG_QUEUE):
            tmp = Path(tempfile.mkdtemp(prefix="inkq-bench-fair-read-"))
            server = RedisServer()
            setups.append({"server": server})
            client = redis_lib.Redis.from_url(server.url)
            store = JobStore(client, 86400, 604800)
            users = min(waiting, 100)
            for i in range(waiting - 1):
                store.enqueue(new_job_id(), f"user{i % users}", "ia-gen", {"prompt": "p", "engine": "gemini"}, None, None)
            probe = new_job_id()  # the last job of the user with the most: the last in the fair order
            owner = f"user{(waiting - 1) % users}"
            store.enqueue(probe, owner, "ia-gen", {"prompt": "p", "engine": "gemini"}, None, None)
            api = GunicornApi({"REDIS_URL": server.url, "API_KEYS": f"tok-probe:{owner}", "SECRET_KEY": "b" * 32,
                               "READ_RATE_LIMIT": "1000000/minute", "STATUS_CACHE_S": "0", "WEB_CONCURRENCY": "1",
                               "LOG_FORMAT": "text", "LOG_LEVEL": "WARNING", "ACCESS_LOG": ""}, str(tmp / "api.log"))
            setups[-1].update(api=api, client=client, url=f"{api.url}/status/{probe}", session=requests.Session(),
                              rounds=[])
        headers = {"Authorization": "Bearer tok-probe"}
        for setup in setups:
            setup["position"] = setup["session"].get(setup["url"], headers=headers, timeout=10).json()["queuePosition"]
            for _ in range(200):
                setup["session"].get(setup["url"], headers=headers, timeout=10)
        for _ in range(ROUNDS):
            for setup in setups:
                setup["client"].config_resetstat()
                latencies = []
                for _ in range(READS):
                    started = time.perf_counter()
                    setup["session"].get(setup["url"], headers=headers, timeout=10)
                    latencies.append(time.perf_counter() - started)
                script = setup["client"].info("commandstats").get("cmdstat_evalsha", {})
                setup["rounds"].append((script.get("usec_per_call", float("nan")), _p(latencies, 50) * 1000,
                                        _p(latencies, 99) * 1000))
        rows = []
        for setup in setups:
            rounds = setup["rounds"]
            rows.append({"waiting": setup["client"].llen("rq:queue:ia-gen"), "position": setup["position"],
                         "usec": statistics.median(r[0] for r in rounds), "p50": statistics.median(r[1] for r in rounds),
                         "p99": statistics.median(r[2] for r in rounds)})
        return rows
    finally:
        for setup in setups:
            if "api" in setup:
                setup["api"].stop()
            setup["server"].stop()


def main() -> int:
    from tests.conftest import photo

    def check(ok, text):
        print(f"  {'PASS' if ok else 'FAIL'}: {text}")
    if "fair" in PARTS:
        print(f"fair order: one user queues {HEAVY_JOBS} Gemini stencils, {LIGHT_USERS} users queue one each 1 s later; "
              f"fake Gemini {LATENCY_S:g} s, CONCURRENCY_STENCIL={CONCURRENCY}")
        r = fair(photo((256, 256)))
        print(f"{'user':>8} {'202 pos':>8} {'202 etaS':>9} {'max pos':>8} {'result s':>9}")
        for user in sorted(r["answers"], key=lambda u: int(u[5:])):
            positions = [p for p in r["seen"][user] if p is not None]
            print(f"{user:>8} {r['answers'][user]['queuePosition']!s:>8} {r['answers'][user]['etaS']!s:>9} "
                  f"{max(positions, default=0):>8} {r['ttr'].get(user, float('nan')):9.1f}")
        most = max(p for seen in r["seen"].values() for p in seen if p is not None)
        slowest = max(r["ttr"].values()) if r["ttr"] else float("nan")
        print(f"  light users: time to result p50 {statistics.median(r['ttr'].values()):.1f} s, max {slowest:.1f} s; "
              f"heavy user: {r['heavy_done']}/{HEAVY_JOBS} completed, the last {r['heavy_drain']:.1f} s after its first submission")
        check(most <= LIGHT_USERS + 1, f"the light users' queuePosition at most {most} <= {LIGHT_USERS + 1}")
        check(r["completed"] == r["n"] and slowest <= 25, f"all {r['n']} light users' results within {slowest:.1f} s <= 25 s")
        check(r["heavy_done"] == HEAVY_JOBS, f"the heavy user's {HEAVY_JOBS} all complete ({r['heavy_done']})")
        print()
    if "read" in PARTS:
        print(f"status read of the last waiting job, status cache off, one API process: median of {ROUNDS} rounds of "
              f"{READS} reads in turn")
        rows = read_cost()
        print(f"{'waiting':>8} {'position':>9} {'Redis us/read':>14} {'client p50':>11} {'client p99':>11}")
        for row in rows:
            print(f"{row['waiting']:>8} {row['position']!s:>9} {row['usec']:14.1f} {row['p50']:9.2f}ms {row['p99']:9.2f}ms")
        ratio = rows[1]["usec"] / rows[0]["usec"] if rows[0]["usec"] else float("nan")
        check(ratio <= 1.5, f"Redis time per read at {LONG_QUEUE:,} waiting: {ratio:.2f}x that at 10 (<= 1.5x)")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
