"""Benchmark of the image store: Redis memory per finished job with a 12 MP photo, with
BLOB_STORE=redis and with BLOB_STORE=s3 (SeaweedFS from PyPI, on loopback), and the submission of the
same photo as a direct upload (POST /uploads, the form POST to the store, POST /generate with `upload`)
beside multipart through the API, in the same run.

Each mode has its own redis-server and worker service (scripts/start_workers.sh); the API is served
in-process over real HTTP. Memory is the sum of MEMORY USAGE over every key after the jobs have ended
minus before, divided by the jobs: their job hashes, results, indexes, expiry entries and, with Redis,
the PNGs (`used_memory` moves with buffers and the allocator by more than one S3 job). Always exits 0.
"""
from __future__ import annotations

import io
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis as redis_lib
import requests
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Api, base_config  # noqa: E402
from tests.servers import ApiServer, RedisServer, SeaweedFS, Workers  # noqa: E402

BUCKET = "inkq-bench"
JOBS = {"stencil": 2, "color-match": 1}
SUBMITS = 5


def photo_12mp() -> bytes:
    """A real photo at 4000x3000 (12 MP) as JPEG, quality 90."""
    img = Image.fromarray(data.astronaut()).resize((4000, 3000), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def stack(mode_env: dict, tmp: str, name: str):
    """A redis-server, a worker service and the API for one mode."""
    server = RedisServer()
    env = {"REDIS_URL": server.url, "CONCURRENCY_STENCIL": "1", "CONCURRENCY_ENHANCE": "1",
           "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
           "LOG_LEVEL": "WARNING", **mode_env}
    workers = Workers(env, f"{tmp}/{name}-workers.log")
    client = redis_lib.Redis.from_url(server.url)
    workers.wait_ready(client, 4, timeout=180)
    from api import create_app

    app_server = ApiServer(create_app(base_config(server.url, MAX_UPLOAD_MB="20", MAX_INFLIGHT_PER_USER="1000",
                                                  ACCESS_LOG="", **mode_env)))
    logging.getLogger("inkq").setLevel(logging.WARNING)
    return server, workers, app_server, Api(app_server.url), client


def key_bytes(client) -> int:
    """What every key in Redis takes (MEMORY USAGE summed): what the jobs keep, without buffers."""
    return sum(client.memory_usage(key, samples=0) or 0 for key in client.scan_iter(count=1000))


def memory_per_job(api: Api, client, image: bytes) -> dict[str, float]:
    """Redis memory (all keys) added per finished job, per operation (KB)."""
    out = {}
    for operation, count in JOBS.items():
        before = key_bytes(client)
        ids = []
        for _ in range(count):
            response = api.post("/generate", files={"image": ("photo.jpg", image, "image/jpeg")},
                                data={"operation": operation, "engine": "local"})
            assert response.status_code == 202, response.text
            ids.append(response.json()["jobId"])
        for job_id in ids:
            status = api.wait(job_id, timeout=600)
            assert status["status"] == "completed", status
        time.sleep(1.5)  # the end callbacks (input deleted) have run
        out[operation] = (key_bytes(client) - before) / count / 1024
    return out


def timed(fn, n: int) -> float:
    """Median wall time of fn() in ms over n runs (after one warm-up)."""
    fn()
    runs = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs)


def submit_multipart(api: Api, image: bytes) -> None:
    response = api.post("/generate", files={"image": ("photo.jpg", image, "image/jpeg")},
                        data={"operation": "color-match"})
    assert response.status_code == 202, response.text


def submit_direct(api: Api, image: bytes) -> None:
    created = api.post("/uploads", json={"contentType": "image/jpeg"}).json()
    stored = requests.post(created["url"], data=created["fields"], files={"file": ("photo.jpg", image, "image/jpeg")},
                           timeout=60)
    assert stored.status_code == 204, stored.text
    response = api.post("/generate", json={"operation": "color-match", "upload": created["uploadId"]})
    assert response.status_code == 202, response.text


def main() -> int:
    image = photo_12mp()
    print(f"photo: 4000x3000 JPEG, {len(image) / 1e6:.2f} MB")
    tmp = tempfile.mkdtemp(prefix="inkq-bench-blobs-")
    weed = SeaweedFS(f"{tmp}/weed.log")
    weed.bucket(BUCKET)
    modes = {"redis": {}, "s3": {"BLOB_STORE": f"s3://{BUCKET}/bench", **weed.env}}
    results = {}
    try:
        for name, env in modes.items():
            server, workers, app_server, api, client = stack(env, tmp, name)
            try:
                results[name] = memory_per_job(api, client, image)
                held = sum(client.memory_usage(k) or 0 for k in client.scan_iter("inkq:blob:*"))
                print(f"{name:5}: Redis memory per finished job " + ", ".join(
                    f"{op} {kb:,.1f} KB" for op, kb in results[name].items()) + f"; image keys hold {held / 1024:,.0f} KB")
                if name == "s3":
                    multipart = timed(lambda: submit_multipart(api, image), SUBMITS)
                    direct = timed(lambda: submit_direct(api, image), SUBMITS)
                    print(f"s3   : submit a 12 MP photo, median of {SUBMITS}: multipart through the API {multipart:.0f} ms,"
                          f" direct upload + submit {direct:.0f} ms (ratio {direct / multipart:.2f});"
                          " the API handled 0 image bytes on the direct path")
                else:
                    multipart = timed(lambda: submit_multipart(api, image), SUBMITS)
                    print(f"redis: submit a 12 MP photo, multipart through the API, median of {SUBMITS}: {multipart:.0f} ms")
            finally:
                app_server.stop()
                workers.stop(timeout=30)
                server.stop()
    finally:
        weed.close()
    if "redis" in results and "s3" in results:
        for op in JOBS:
            print(f"{op}: S3 keeps {results['s3'][op]:,.1f} KB per job in Redis against {results['redis'][op]:,.1f} KB "
                  f"({results['redis'][op] / max(results['s3'][op], 0.1):,.0f}x less)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not fail the make target
        print(f"bench_blobs failed: {exc!r}")
        sys.exit(0)
