"""What an operator sees: every log line JSON, request ids from the client into the workers'
lines, job metrics on /metrics and /admin/queue-stats, and the shipped alert rules.

The services are the real ones: `scripts/start_api.sh` (gunicorn, gevent) and
`scripts/start_workers.sh`, with LOG_FORMAT=json, on a Redis of their own; Gemini is the fake server.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import requests
import redis as redis_lib

from tests import fakegemini as fg
from tests.api.test_hostile_input import raw_request
from tests.conftest import ADMIN_TOKEN, photo, webhook_receiver
from tests.servers import ROOT, GunicornApi, RedisServer, Workers, live_workers_expected, wait_until

RID = "req-obs.42:A_b"


def _lines(path) -> list[str]:
    return [line for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]


def _parsed(path) -> list[dict]:
    out = []
    for number, line in enumerate(_lines(path), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path} line {number} is not JSON: {line[:300]!r}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        out.append(entry)
    return out


def _metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text; fails when it is missing."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("observability")
    server = RedisServer()
    gemini = fg.FakeGemini().start()
    env = {"REDIS_URL": server.url, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "GEMINI_API_KEY": "obs-secret-key",
           "GEMINI_BASE_URL": gemini.url, "GEMINI_TIMEOUT_S": "10", "CONCURRENCY_STENCIL": "2",
           "CONCURRENCY_ENHANCE": "1", "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
           "WEBHOOK_SECRET": "whsec_aG9vay1zZWNyZXQtZm9yLXRlc3Rz", "WEBHOOK_RETRY_S": "1,1,1,1,1", "WEBHOOK_ALLOW_PRIVATE": "true", "PYTHONWARNINGS": "always"}
    workers = Workers(env, str(tmp / "workers.log"))
    api = GunicornApi({**env, "API_KEYS": "tok-alice:alice,tok-bob:bob", "ADMIN_TOKEN": ADMIN_TOKEN,
                       "SECRET_KEY": "s" * 32, "METRICS_TOKEN": "scrape-me", "WEB_CONCURRENCY": "1",
                       "RATE_LIMIT": "10000/minute", "ACCESS_LOG": "-"}, str(tmp / "api.log"))
    client = redis_lib.Redis.from_url(server.url)
    try:
        workers.wait_ready(client, live_workers_expected(env))
        with webhook_receiver() as (hook_url, hooks):
            yield {"api": api, "workers": workers, "gemini": gemini, "redis": client, "tmp": tmp,
                   "hook_url": hook_url, "hooks": hooks}
    finally:
        api.stop()
        workers.stop()
        gemini.stop()
        server.stop()


def _post(api, path, token="tok-alice", headers=None, **kw):
    return requests.post(api.url + path, headers={"Authorization": f"Bearer {token}", **(headers or {})},
                         timeout=30, **kw)


def _get(api, path, token="tok-alice", headers=None):
    return requests.get(api.url + path, headers={"Authorization": f"Bearer {token}", **(headers or {})}, timeout=30)


def _wait(api, job_id):
    def ended():
        body = _get(api, f"/status/{job_id}").json()
        return body if body["status"] in ("completed", "failed", "canceled") else None
    return wait_until(ended, timeout=90, interval=0.2, what=f"job {job_id} to end")


@pytest.fixture(scope="module")
def ran(services):
    """Jobs with known outcomes: a local stencil (completed, with the request id), an ia-gen retried once
    then completed, one failed for good, and a canceled one."""
    import base64

    api, gemini = services["api"], services["gemini"]
    image = base64.b64encode(photo((96, 96))).decode()
    stencil = _post(api, "/generate", headers={"X-Request-ID": RID},
                    json={"image": image, "engine": "local", "webhookUrl": services["hook_url"]})
    assert stencil.status_code == 202 and stencil.headers["X-Request-ID"] == RID
    gemini.push(fg.error(503), fg.ok())
    retried = _post(api, "/generate", json={"operation": "ia-gen", "prompt": "a swallow"}).json()["jobId"]
    assert _wait(api, retried)["status"] == "completed"
    gemini.push(fg.blocked())
    failed = _post(api, "/generate", json={"operation": "ia-gen", "prompt": "a swallow"}).json()["jobId"]
    assert _wait(api, failed)["status"] == "failed"
    first = _wait(api, stencil.json()["jobId"])
    assert first["status"] == "completed"
    services["hooks"].get(timeout=30)
    file_url = first["result"]["image"]
    assert requests.get(file_url, timeout=30).status_code == 200
    gemini.push(fg.slow(30))
    canceled = _post(api, "/generate", json={"operation": "ia-gen", "prompt": "a swallow"}).json()["jobId"]
    wait_until(lambda: gemini.requests and len(gemini.requests) >= 4, timeout=30, what="the slow call")
    assert requests.delete(f"{api.url}/jobs/{canceled}", headers={"Authorization": "Bearer tok-alice"},
                           timeout=30).status_code == 200
    _wait(api, canceled)
    return {"stencil": stencil.json()["jobId"], "retried": retried, "failed": failed, "canceled": canceled,
            "file_url": file_url}


def test_request_ids_are_kept_made_and_echoed_on_errors(services):
    api = services["api"]
    assert _get(api, "/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    for bad in ("x" * 129, "has space", "semi;colon", ""):
        made = _get(api, "/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert made != bad and re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", made)
    unauth = requests.get(api.url + "/credits", headers={"X-Request-ID": "e-401"}, timeout=10)
    assert unauth.status_code == 401 and unauth.headers["X-Request-ID"] == "e-401"
    missing = _get(api, "/status/" + "0" * 32, headers={"X-Request-ID": "e-404"})
    assert missing.status_code == 404 and missing.headers["X-Request-ID"] == "e-404"
    bad_body = _post(api, "/generate", headers={"X-Request-ID": "e-400"}, data=b"{not json")
    assert bad_body.status_code == 400 and bad_body.headers["X-Request-ID"] == "e-400"
    a = _get(api, "/healthz").headers["X-Request-ID"]
    assert a != _get(api, "/healthz").headers["X-Request-ID"]


def test_job_metrics_show_outcomes_times_and_gemini_calls(services, ran):
    api = services["api"]
    assert requests.get(api.url + "/metrics", timeout=10).status_code == 401
    wait_until(lambda: "canceled" in _get(api, "/metrics", token="scrape-me").text, timeout=10)
    text = _get(api, "/metrics", token="scrape-me").text
    assert _metric(text, "inkq_jobs_total", queue="stencil-generation", outcome="completed") == 1
    assert _metric(text, "inkq_jobs_total", queue="ia-gen", outcome="completed") == 1
    assert _metric(text, "inkq_jobs_total", queue="ia-gen", outcome="retried") == 1
    assert _metric(text, "inkq_jobs_total", queue="ia-gen", outcome="failed") == 1
    assert _metric(text, "inkq_jobs_total", queue="ia-gen", outcome="canceled") == 1
    assert _metric(text, "inkq_jobs_total", queue="enhance", outcome="completed") == 0
    assert _metric(text, "inkq_gemini_calls_total", outcome="ok") == 1
    assert _metric(text, "inkq_gemini_calls_total", outcome="retryable") == 1
    assert _metric(text, "inkq_gemini_calls_total", outcome="final") == 1
    assert _metric(text, "inkq_gemini_call_seconds_count", outcome="ok") == 1
    assert _metric(text, "inkq_job_run_seconds_count", queue="stencil-generation") == 1
    assert _metric(text, "inkq_job_run_seconds_count", queue="ia-gen") >= 3  # ok, retried, failed attempts
    assert _metric(text, "inkq_job_run_seconds_bucket", queue="stencil-generation", le="+Inf") == 1
    assert _metric(text, "inkq_job_wait_seconds_count", queue="ia-gen") >= 4
    assert _metric(text, "inkq_job_wait_seconds_sum", queue="stencil-generation") > 0
    for queue in ("stencil-generation", "ia-gen", "enhance", "color-match"):  # one process each (threads)
        assert _metric(text, "inkq_queue_live_workers", queue=queue) == 1
        assert _metric(text, "inkq_queue_oldest_waiting_seconds", queue=queue) == 0
    stats = _get(api, "/admin/queue-stats", token=ADMIN_TOKEN).json()
    ia = stats["ia-gen"]
    assert ia["totals"] == {"completed": 1, "failed": 1, "retried": 1, "canceled": 1, "expired": 0, "recovered": 0,
                            "late": 0}
    assert ia["liveWorkers"] == 1 and ia["oldestWaitingS"] == 0
    assert ia["runTime"]["count"] >= 3 and ia["queueWait"]["count"] >= 4
    assert {"waiting", "active", "completed", "failed", "scheduled", "workers", "concurrency"} <= ia.keys()


def test_oldest_waiting_age_and_a_queue_without_workers():
    """With no worker for a queue, a job waiting since an hour ago shows as such, and no live worker."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    from api import create_app
    from tests.conftest import base_config

    server = RedisServer()
    redis_url = server.url
    redis = redis_lib.Redis.from_url(redis_url)
    job = Queue("enhance", connection=redis, serializer=JSONSerializer).enqueue_call(
        "tasks.jobs.enhance", args=({"jobId": "x"},))
    redis.hset(job.key, "enqueued_at", "2020-01-01T00:00:00.000000Z")
    client = create_app(base_config(redis_url)).test_client()
    text = client.get("/metrics").get_data(as_text=True)
    assert _metric(text, "inkq_queue_oldest_waiting_seconds", queue="enhance") > 3600 * 24
    assert _metric(text, "inkq_queue_oldest_waiting_seconds", queue="ia-gen") == 0
    assert _metric(text, "inkq_queue_live_workers", queue="enhance") == 0
    stats = client.get("/admin/queue-stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).get_json()
    assert stats["enhance"]["oldestWaitingS"] > 3600 * 24 and stats["enhance"]["liveWorkers"] == 0
    server.stop()


def test_every_line_of_both_logs_is_json_and_the_request_id_reaches_the_workers(services, ran):
    tmp = services["tmp"]
    api_lines, worker_lines = _parsed(tmp / "api.log"), _parsed(tmp / "workers.log")
    assert len(api_lines) > 10 and len(worker_lines) > 10
    submit = [e for e in api_lines if e.get("requestId") == RID]
    access = [e for e in submit if e["logger"] == "inkq.access"]
    assert access and access[0]["method"] == "POST" and access[0]["path"] == "/generate"
    assert access[0]["status"] == 202 and access[0]["userId"] == "alice" and access[0]["durationMs"] > 0
    assert any(e["message"] == "job queued" and e.get("jobId") == ran["stencil"] for e in submit)
    mine = [e for e in worker_lines if e.get("jobId") == ran["stencil"]]
    assert mine and all(e.get("requestId") == RID for e in mine), mine
    assert any(e["logger"].startswith("rq.") for e in mine)  # rq's own lines about the job carry it too
    assert all(e.get("queue") == "stencil-generation" and e.get("userId") == "alice" and e.get("attempt") == 1
               for e in mine)
    loggers = {e["logger"] for e in api_lines} | {e["logger"] for e in worker_lines}
    assert {"gunicorn.error", "inkq.access", "rq.worker", "inkq.workers"} <= loggers, loggers
    assert any(e["logger"] == "inkq.gemini" and "durationMs" in e for e in worker_lines)
    assert any(e["logger"] == "inkq.webhooks" and "delivered" in e["message"] and "durationMs" in e for e in mine)
    retried = [e for e in worker_lines if e.get("jobId") == ran["retried"]]
    assert {1, 2} <= {e.get("attempt") for e in retried}


def test_logs_hold_no_secrets(services, ran):
    tmp = services["tmp"]
    text = open(tmp / "api.log").read() + open(tmp / "workers.log").read()
    token = ran["file_url"].rsplit("/", 1)[1]
    for secret in ("tok-alice", ADMIN_TOKEN, "scrape-me", "obs-secret-key", "aG9vay1zZWNyZXQtZm9yLXRlc3Rz", token, "s" * 32):
        assert secret not in text, secret
    assert '"path": "/files/\\u2026"' in text  # the signed download was logged with its token cut


def test_text_logs_stay_readable(tmp_path):
    """LOG_FORMAT=text: plain lines, context as key=value."""
    program = ("import logging; from tasks.core import logs; logs.configure('text'); "
               "logs.bind(jobId='j1', requestId='r1'); logging.getLogger('rq.worker').info('Job OK')")
    out = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "python"), "-c", program], cwd=ROOT,
                         capture_output=True, text=True, timeout=30).stderr.strip()
    assert re.fullmatch(r"\S+ \S+ INFO rq\.worker Job OK \[jobId=j1 requestId=r1\]", out), out


def test_text_logs_cannot_be_forged(redis_url, tmp_path):
    """LOG_FORMAT=text under gunicorn: a path with an encoded newline (and other control characters)
    is escaped on its access line; it never starts a line that reads like a record of its own."""
    api = GunicornApi({"REDIS_URL": redis_url, "API_KEYS": "tok-l:logger", "SECRET_KEY": "k" * 32,
                       "WEB_CONCURRENCY": 1, "LOG_FORMAT": "text"}, str(tmp_path / "api.log"))
    try:
        forged = "2020-01-01 00:00:00,000 INFO inkq.access GET /admin/forged 200"
        target = "/nope%0A" + forged.replace(" ", "%20") + "%0D%1B%5B31m%E2%80%A8"
        status, _, _ = raw_request(api.url, "GET", target)
        assert status == 404
    finally:
        api.stop()
    lines = open(tmp_path / "api.log", encoding="utf-8").read().splitlines()
    assert not [line for line in lines if line.startswith("2020-01-01")], lines
    access = [line for line in lines if " inkq.access GET /nope" in line]
    assert len(access) == 1 and "/nope\\n2020-01-01" in access[0] and "\\r\\x1b[31m" in access[0], access
    assert "\\x80" in access[0]  # WSGI paths are latin-1: U+2028's UTF-8 bytes arrive as C1 characters
    assert all(re.match(r"\d{4}-\d\d-\d\d |    ", line) for line in lines), lines


def test_text_log_records_of_several_lines_cannot_be_forged():
    """LOG_FORMAT=text: an exception whose message carries a client's text (a newline and a line that reads
    like a record, an escape sequence) is logged with its traceback; every further line of the record is
    indented and escaped, and a context field is escaped too, so each line at column 0 starts a real record."""
    import logging
    import sys

    from tasks.core import logs

    forged = "2020-01-01 00:00:00,000 INFO inkq.access GET /admin/forged 200"
    try:
        raise ValueError(f"bad input\n{forged}\r\x1b[31m\u2028{forged}")
    except ValueError:
        record = logging.LogRecord("inkq.api", logging.ERROR, __file__, 1, "request failed", None, sys.exc_info())
    record.requestId = f"r1\n{forged}"
    lines = logs.formatter("text").format(record).split("\n")
    assert len(lines) > 3, lines  # the traceback is there
    assert not [line for line in lines if line.startswith("2020-01-01")], lines
    assert all(re.match(r"\d{4}-\d\d-\d\d |    ", line) for line in lines), lines
    assert lines[0].endswith(f"[requestId=r1\\n{forged}]"), lines[0]
    text = "\n".join(lines)
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
    assert "\\r\\x1b[31m\\u2028" in text, text


def test_alert_rules_are_valid():
    """docs/alerts.yml passes `promtool check rules` (Debian package prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus); the alert rules were not checked")
    done = subprocess.run([promtool, "check", "rules", os.path.join(ROOT, "docs", "alerts.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
