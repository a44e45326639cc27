"""Both container images, built and run for real (opt-in: INKQ_TEST_IMAGES=1).

scripts/build_images.sh builds inkq-api and inkq-worker (docker, else podman); the two containers run
on the host network against a throwaway redis-server, and a stencil job goes through them over real
HTTP, from the submission to the PNG behind the signed result URL. compose.yaml's health checks are
run inside the containers, and the worker container must stop cleanly on SIGTERM.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_lib
import requests
import yaml
from PIL import Image

from tests.conftest import photo
from tests.servers import RedisServer, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "scripts" / "build_images.sh"
TOKEN = "tok"

pytestmark = pytest.mark.skipif(os.environ.get("INKQ_TEST_IMAGES") != "1",
                                reason="opt-in: INKQ_TEST_IMAGES=1 builds and runs the container images")


@pytest.fixture(scope="module")
def engine() -> tuple[list[str], list[str]]:
    """The engine command and its ulimit options, from `build_images.sh --engine`; skip if none builds."""
    result = subprocess.run([str(BUILD), "--engine"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.skip(f"no container engine can build here: {result.stderr.strip()}")
    lines = result.stdout.splitlines() + [""]
    return shlex.split(lines[0]), shlex.split(lines[1])


@pytest.fixture(scope="module")
def sizes(engine) -> dict[str, int]:
    """Build both images with scripts/build_images.sh; their sizes in MB, printed."""
    started = time.monotonic()
    result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-4000:]
    found = {name: int(mb) for name, mb in re.findall(r"^inkq-(api|worker) (\d+) MB$", result.stdout, re.M)}
    assert set(found) == {"api", "worker"}, result.stdout
    standin = "STAND-IN" in result.stderr
    print(f"\nimage sizes: inkq-api {found['api']} MB, inkq-worker {found['worker']} MB"
          f"{' (on the stand-in base)' if standin else ''}; built in {time.monotonic() - started:.0f} s")
    return found


class Container:
    """One detached container on the host network, removed by `remove()`."""

    def __init__(self, engine, image: str, env: dict[str, str]):
        self.cmd, ulimits = engine
        self.name = f"inkq-test-{image.split('-')[-1]}-{uuid.uuid4().hex[:8]}"
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        subprocess.run([*self.cmd, "run", "-d", "--init", "--name", self.name, "--network", "host", *ulimits,
                        *env_args, image], check=True, capture_output=True, timeout=120)

    def engine(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run an engine subcommand about this container."""
        return subprocess.run([*self.cmd, *args], capture_output=True, text=True, timeout=timeout)

    def running(self) -> bool:
        return self.engine("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def logs(self) -> str:
        """The container's last output lines, for failure messages."""
        out = self.engine("logs", "--tail", "40", self.name)
        return f"--- {self.name} ---\n{out.stdout}{out.stderr}"

    def stop(self, timeout: int) -> int:
        """SIGTERM, SIGKILL after `timeout` seconds; the exit code."""
        self.engine("stop", "-t", str(timeout), self.name, timeout=timeout + 60)
        return int(self.engine("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())

    def remove(self) -> None:
        self.engine("rm", "-f", self.name)


def healthcheck(service: str) -> list[str]:
    """compose.yaml's health check command of a service (after "CMD")."""
    test = yaml.safe_load((REPO / "compose.yaml").read_text())["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


@pytest.mark.parametrize("store", ["redis", "s3"])
def test_the_images_serve_a_stencil_job(engine, sizes, store, request):
    """With the Redis store, and with BLOB_STORE=s3 on a real S3 server (SeaweedFS on the host): the
    result is then a presigned URL of the store and Redis holds no image bytes."""
    assert sizes["api"] < sizes["worker"], "the API image carries the image stack"
    no_stack = subprocess.run(
        [*engine[0], "run", "--rm", *engine[1], "inkq-api", "python", "-c",
         "import importlib.util as u, sys; sys.exit(' '.join(m for m in ('numpy', 'scipy', 'skimage') if u.find_spec(m)) or None)"],
        capture_output=True, text=True, timeout=120)
    assert no_stack.returncode == 0, f"the API image has the image stack: {no_stack.stderr}"

    redis = RedisServer()
    port = free_port()
    common = {"REDIS_URL": redis.url, "LOG_FORMAT": "text"}
    seaweed = None
    if store == "s3":
        from tests.conftest import S3_BUCKET, S3_STORE

        seaweed = request.getfixturevalue("seaweed")
        common.update({"BLOB_STORE": S3_STORE, **seaweed.env})
    containers: list[Container] = []
    try:
        api = Container(engine, "inkq-api", {**common, "API_KEYS": f"{TOKEN}:alice", "PORT": str(port),
                                             "SECRET_KEY": "container-test-signing-key-0123456789"})
        containers.append(api)
        worker = Container(engine, "inkq-worker", {**common, **{f"CONCURRENCY_{q}": "1" for q in (
            "STENCIL", "ENHANCE", "IA_GEN", "COLOR_MATCH", "WEBHOOKS")}})
        containers.append(worker)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert all(c.running() for c in containers), "a container exited:\n" + "\n".join(
                c.logs() for c in containers)
            try:
                return requests.get(url + "/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=120, interval=0.5, what="the API container")
        started = time.monotonic()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        body = {"image": base64.b64encode(photo((128, 128))).decode(), "engine": "local", "format": "svg"}
        submitted = requests.post(url + "/generate", json=body, headers=auth, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["jobId"]

        def ended() -> dict | None:
            status = requests.get(f"{url}/status/{job_id}", headers=auth, timeout=10).json()
            return status if status["status"] in ("completed", "failed", "canceled") else None

        try:
            status = wait_until(ended, timeout=180, interval=0.5, what=f"job {job_id}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(c.logs() for c in containers)) from None
        assert status["status"] == "completed", f"{status}\n{worker.logs()}"
        if seaweed is not None:
            assert status["result"]["image"].startswith(f"{seaweed.url}/{S3_BUCKET}/"), status["result"]
            assert list(redis_lib.Redis.from_url(redis.url).scan_iter("inkq:blob:*")) == []
        result = requests.get(status["result"]["image"], timeout=30)
        assert result.status_code == 200, result.text
        assert result.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert Image.open(io.BytesIO(result.content)).format == "PNG"
        svg = requests.get(status["result"]["svg"], timeout=30)  # traced by the image's potrace
        assert svg.status_code == 200 and "<path" in svg.text, svg.text[:300]
        print(f"stencil job completed through the containers in {time.monotonic() - started:.1f} s")

        for service, container in (("api", api), ("worker", worker)):
            check = container.engine("exec", container.name, *healthcheck(service))
            assert check.returncode == 0, f"compose health check of {service} fails: {check.stderr}"
        wrong = api.engine("exec", api.name, *healthcheck("worker"))
        assert wrong.returncode != 0, "the worker health check passes without a worker supervisor"

        assert worker.stop(timeout=60) == 0, "the worker container did not stop cleanly on SIGTERM"
    finally:
        for container in containers:
            container.engine("stop", "-t", "10", container.name, timeout=90)
            container.remove()
        redis.stop()
