"""The deploy entry points as real processes: scripts/start_api.sh (gunicorn) and
scripts/start_workers.sh (warm shutdown on SIGTERM); and the seed's own polling client in Node."""
from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis as redis_lib
import requests

from tests import fakegemini as fg
from tests.conftest import ADMIN_TOKEN, photo
from tests.servers import ROOT, RedisServer, Workers, children, free_port, live_workers_expected, wait_until


def _env(**extra) -> dict:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def gunicorn_api(redis_url, tmp_path):
    port = free_port()
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen([os.path.join(ROOT, "scripts", "start_api.sh")], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, env=_env(
                                REDIS_URL=redis_url, HOST="127.0.0.1", PORT=port, API_KEYS="tok-gu:gu",
                                ADMIN_TOKEN=ADMIN_TOKEN, SECRET_KEY="k" * 32, WEB_CONCURRENCY=2,
                                GEMINI_API_KEY="", INKQ_DEV=""))
    url = f"http://127.0.0.1:{port}"

    def ready():
        try:
            return requests.get(url + "/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False
    wait_until(ready, timeout=30, what="gunicorn to serve")
    yield url
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log.close()


def test_start_api_serves_jobs_with_gunicorn(gunicorn_api, workers):
    auth = {"Authorization": "Bearer tok-gu"}
    response = requests.post(gunicorn_api + "/generate", headers=auth, timeout=10,
                             json={"image": base64.b64encode(photo((256, 256))).decode()})
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]

    def done():
        body = requests.get(f"{gunicorn_api}/status/{job_id}", headers=auth, timeout=10).json()
        return body if body["status"] in ("completed", "failed") else None
    status = wait_until(done, timeout=60)
    assert status["status"] == "completed"
    image = requests.get(status["result"]["image"], timeout=10)
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_start_api_refuses_to_run_without_auth(redis_url, tmp_path):
    proc = subprocess.run([os.path.join(ROOT, "scripts", "start_api.sh")], cwd=tmp_path, capture_output=True,
                          timeout=60, env=_env(REDIS_URL=redis_url, PORT=free_port(), API_KEYS="", JWT_SECRET="",
                                               JWT_JWKS_URL="", ADMIN_TOKEN="", SECRET_KEY="k" * 32, INKQ_DEV=""))
    assert proc.returncode == 2
    assert b"no authentication is configured" in proc.stderr


def test_start_workers_refuses_a_public_url_that_is_not_an_origin(redis_url, tmp_path):
    """The worker service signs webhooks' result links under PUBLIC_URL: a bad one stops it at start, not at
    its first delivery."""
    proc = subprocess.run([os.path.join(ROOT, "scripts", "start_workers.sh")], cwd=tmp_path, capture_output=True,
                          timeout=120, env=_env(REDIS_URL=redis_url, PUBLIC_URL="ftp://api.example.com/x?y"))
    assert proc.returncode == 2
    assert b"PUBLIC_URL must be like https://api.example.com" in proc.stdout + proc.stderr


def test_engine_runs_go_at_a_lower_cpu_priority_than_the_api(tmp_path):
    """With WORKER_NICE, each CPU-pool process (where every local engine run goes) runs in a session of
    its own whose autogroup is lowered, niced, under SCHED_IDLE; the supervisor and the queue processes
    (provider calls, Redis writes) keep their ordinary priority; a local job still completes."""
    from api import create_app
    from tests.conftest import base_config

    server = RedisServer()
    service = Workers({"REDIS_URL": server.url, "CONCURRENCY_STENCIL": "1", "CONCURRENCY_ENHANCE": "1",
                       "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
                       "WORKER_NICE": "7", "INKQ_CPU_PROCESSES": "2", "LOG_LEVEL": "WARNING"},
                      str(tmp_path / "workers.log"))
    try:
        client = redis_lib.Redis.from_url(server.url)
        service.wait_ready(client, 4)
        forked = children(service.proc.pid)
        pool = [pid for pid in forked if os.getsid(pid) == pid]
        queues = [pid for pid in forked if pid not in pool]
        assert len(pool) == 2 and len(queues) == 5, forked  # the four queues and webhooks
        for pid in pool:
            assert os.sched_getscheduler(pid) == os.SCHED_IDLE
            assert os.getpriority(os.PRIO_PROCESS, pid) == 7
            assert os.getpgid(pid) == pid
            if os.path.exists(f"/proc/{pid}/autogroup"):  # kernels built with autogroups
                assert open(f"/proc/{pid}/autogroup").read().split()[-1] == "7"
        for pid in [service.proc.pid, *queues]:
            assert os.sched_getscheduler(pid) == os.SCHED_OTHER
            assert os.getpriority(os.PRIO_PROCESS, pid) == 0
            assert os.getsid(pid) == service.proc.pid

        app = create_app(base_config(server.url))
        response = app.test_client().post("/generate", data={"image": (io.BytesIO(photo((96, 96))), "p.jpg")},
                                          headers={"Authorization": "Bearer tok-alice"})
        assert response.status_code == 202, response.json
        job_id = response.json["jobId"]
        wait_until(lambda: client.hget(f"rq:job:{job_id}", "status") in (b"finished", b"failed"), timeout=60,
                   what="the local stencil")
        assert client.hget(f"rq:job:{job_id}", "status") == b"finished"
    finally:
        service.stop()
        server.stop()


def test_start_workers_warm_shutdown(fake_gemini, tmp_path):
    """SIGTERM lets the running job finish, then every process of the service exits cleanly."""
    from api import create_app
    from tests.conftest import Api, base_config
    from tests.servers import ApiServer

    server = RedisServer()
    workers = Workers({"REDIS_URL": server.url, "CONCURRENCY_STENCIL": "1", "CONCURRENCY_ENHANCE": "1",
                       "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1", "GEMINI_API_KEY": "test-key",
                       "GEMINI_BASE_URL": fake_gemini.url, "GEMINI_TIMEOUT_S": "20"}, str(tmp_path / "w.log"))
    app_server = ApiServer(create_app(base_config(server.url, GEMINI_API_KEY="test-key")))
    try:
        api = Api(app_server.url)
        import redis as redis_lib
        from rq import Worker
        client = redis_lib.Redis.from_url(server.url)
        wait_until(lambda: len(Worker.all(connection=client)) >= 4, timeout=60, what="every queue's worker to start")
        fake_gemini.push(fg.slow(4))
        job_id = api.post("/generate", json={"operation": "ia-gen", "prompt": "a swallow"}).json()["jobId"]
        wait_until(lambda: api.get(f"/status/{job_id}").json()["stage"] == "sending to Gemini", timeout=60)
        started = time.monotonic()
        workers.proc.send_signal(signal.SIGTERM)
        assert workers.proc.wait(60) == 0
        assert time.monotonic() - started >= 2  # it waited for the job
        status = api.get(f"/status/{job_id}").json()
        assert status["status"] == "completed", status
        def group_empty():
            return subprocess.run(["pgrep", "-g", str(workers.proc.pid)], capture_output=True).stdout == b""
        deadline = time.monotonic() + 10  # a process may still be finishing its exit after its parent
        while not group_empty() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = subprocess.run(["pgrep", "-g", str(workers.proc.pid)], capture_output=True, text=True).stdout.split()
        info = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,args", "-p", ",".join(left) or "1"],
                              capture_output=True, text=True).stdout
        assert left == [], info
    finally:
        workers.stop()
        app_server.stop()
        server.stop()


SEED_CLIENT = r"""
// The seed's generateStencil (seed/sistema-de-filas.md), with only its URLs and auth header changed.
const BASE = process.env.INKQ_URL;
const AUTH = { Authorization: `Bearer ${process.env.INKQ_TOKEN}` };
async function generateStencil(image) {
  // 1. Enviar para fila
  const response = await fetch(`${BASE}/generate`, {
    method: 'POST',
    headers: AUTH,
    body: JSON.stringify({ image, style: 'standard' }),
  });

  const { jobId } = await response.json();

  // 2. Polling de status (a cada 2s)
  return await new Promise((resolve, reject) => {
  const checkStatus = async () => {
    const statusResponse = await fetch(
      `${BASE}/status/${jobId}?queue=stencil-generation`, { headers: AUTH }
    );
    const status = await statusResponse.json();

    if (status.status === 'completed') {
      console.log('✅ Concluído!', status.result);
      return resolve(status.result.image);
    }

    if (status.status === 'failed') {
      console.error('❌ Falhou:', status.error);
      return reject(new Error(status.error));
    }

    // Ainda processando
    console.log(`⏳ ${status.progress}%`);
    setTimeout(checkStatus, 2000); // Tentar novamente em 2s
  };
  checkStatus();
  });
}
const fs = require('fs');
const image = 'data:image/jpeg;base64,' + fs.readFileSync(process.argv[2]).toString('base64');
generateStencil(image).then(async (url) => {
  const png = await fetch(url);  // no Authorization header: the URL is signed
  console.log('RESULT', png.status, png.headers.get('content-type'));
}).catch((e) => { console.error('ERROR', e.message); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_seed_polling_client_works_unchanged(api, workers, tmp_path):
    script = tmp_path / "seed_client.js"
    script.write_text(SEED_CLIENT)
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(photo((300, 300)))
    proc = subprocess.run(["node", str(script), str(picture)], capture_output=True, text=True, timeout=90,
                          env={**os.environ, "INKQ_URL": api.url, "INKQ_TOKEN": "tok-alice"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RESULT 200 image/png" in proc.stdout


@pytest.mark.parametrize("delay", [0.5, 2.5])
def test_start_workers_stops_promptly_when_stopped_during_start_up(tmp_path, delay):
    """A SIGTERM that arrives while the service is still starting (importing, forking workers,
    registering them) is not lost."""
    server = RedisServer()
    workers = Workers({"REDIS_URL": server.url, "CONCURRENCY_STENCIL": "2", "CONCURRENCY_ENHANCE": "1",
                       "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "2"}, str(tmp_path / "w.log"))
    try:
        time.sleep(delay)
        workers.proc.send_signal(signal.SIGTERM)
        assert workers.proc.wait(45) == 0, (tmp_path / "w.log").read_text()[-3000:]
    finally:
        workers.stop()
        server.stop()


def test_group_sigterm_stops_an_idle_service_promptly(tmp_path):
    """SIGTERM to the whole process group (Ctrl-C, systemd): each idle worker gets it and, a moment
    later, the supervisor's own. The kernel handed one to rq's pub/sub thread or the liveness thread,
    the main thread slept on in BLMOVE and the service took minutes to stop. The dequeue wait is set
    long here so that a lost signal shows."""
    server = RedisServer()
    client = redis_lib.Redis.from_url(server.url)
    try:
        for trial in range(3):
            env = {"REDIS_URL": server.url, "CONCURRENCY_STENCIL": "2", "CONCURRENCY_ENHANCE": "1",
                   "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
                   "INKQ_DEQUEUE_WAIT_S": "300"}
            workers = Workers(env, str(tmp_path / f"w{trial}.log"))
            try:
                workers.wait_ready(client, live_workers_expected(env))
                time.sleep(0.5)
                os.killpg(workers.proc.pid, signal.SIGTERM)
                assert workers.proc.wait(15) == 0
            finally:
                workers.stop()
    finally:
        server.stop()
