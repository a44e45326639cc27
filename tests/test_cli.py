"""The `inkq` command line, installed as a console script, against the real API and workers."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
import uuid

import pytest

from tests import fakegemini as fg
from tests.conftest import drawing, photo

INKQ = os.path.join(os.path.dirname(sys.executable), "inkq")


@pytest.fixture
def gem_api(make_api):
    """The API with the (fake) Gemini provider configured, so ia-gen is accepted."""
    return make_api(GEMINI_API_KEY="test-key")


def inkq(api, *args, token="tok-alice", timeout=120, **env) -> subprocess.CompletedProcess:
    """Run the installed `inkq` with INKQ_URL/INKQ_TOKEN pointing at the test API."""
    full = {**os.environ, "INKQ_URL": api.url, "INKQ_TOKEN": token or "", **env}
    return subprocess.run([INKQ, *args], capture_output=True, text=True, timeout=timeout, env=full)


def test_generate_wait_and_save(api, workers, tmp_path):
    source = tmp_path / "photo.jpg"
    source.write_bytes(photo((128, 128)))
    out = tmp_path / "stencil.png"
    done = inkq(api, "generate", str(source), "--engine", "local", "--style", "bold", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = done.stdout.splitlines()
    assert re.match(r"\w+ queued on stencil-generation", lines[0]) and lines[-1].endswith(f"saved {out}")
    assert any(" completed 100% " in line for line in lines)
    assert "Traceback" not in done.stderr
    vector = tmp_path / "stencil.svg"
    done = inkq(api, "generate", str(source), "--engine", "local", "-o", str(vector))
    assert done.returncode == 0, done.stderr
    assert vector.read_text().startswith("<?xml") and "<path" in vector.read_text()


def test_json_output_and_the_other_commands(api, workers, tmp_path):
    source = tmp_path / "d.png"
    source.write_bytes(drawing())
    done = inkq(api, "--json", "generate", str(source), "--engine", "local", "--wait")
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout.splitlines()[-1])
    assert final["status"] == "completed" and final["result"]["image"].startswith("http")
    job_id = final["jobId"]
    status = inkq(api, "status", job_id, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["jobId"] == job_id
    assert inkq(api, "status", job_id).stdout.startswith(f"{job_id} completed 100%")
    listed = inkq(api, "jobs", "--limit", "5", "--json")
    assert job_id in [j["jobId"] for j in json.loads(listed.stdout)["jobs"]]
    assert job_id in inkq(api, "jobs").stdout
    assert inkq(api, "credits").returncode == 0
    again = inkq(api, "cancel", job_id)
    assert again.returncode == 2 and "conflict" in again.stderr  # already ended
    erased = inkq(api, "erase", job_id)
    assert erased.returncode == 0 and erased.stdout.strip() == f"{job_id} erased", erased.stderr
    assert inkq(api, "status", job_id).returncode == 2  # 404 now, as an unknown id
    assert inkq(api, "erase", job_id).returncode == 2
    kept = inkq(api, "generate", str(source), "--engine", "local", "--retention-s", "60", "--wait", "--json")
    assert kept.returncode == 0, kept.stderr
    short = inkq(api, "generate", str(source), "--retention-s", "59")
    assert short.returncode == 2 and "retentionS" in short.stderr


def test_credits_says_when_they_are_off(make_api):
    off_user, on_user = ("u" + uuid.uuid4().hex[:10] for _ in range(2))
    off = make_api(API_KEYS=f"tok-{off_user}:{off_user}")
    assert off.get("/credits", token=f"tok-{off_user}").json() == {"balance": 0, "enabled": False}
    assert inkq(off, "credits", token=f"tok-{off_user}").stdout.strip() == "credits are off on this server"
    assert json.loads(inkq(off, "--json", "credits", token=f"tok-{off_user}").stdout)["enabled"] is False
    on = make_api(API_KEYS=f"tok-{on_user}:{on_user}", CREDITS_ENABLED="true", CREDITS_INITIAL="5")
    assert on.get("/credits", token=f"tok-{on_user}").json() == {"balance": 5, "enabled": True}
    assert inkq(on, "credits", token=f"tok-{on_user}").stdout.strip() == "5"


def test_cancel_and_failed_jobs_exit_1(gem_api, workers, fake_gemini):
    api = gem_api
    fake_gemini.push(fg.blocked("SAFETY"))
    failed = inkq(api, "generate", "--operation", "ia-gen", "--prompt", "a rose", "--wait")
    assert failed.returncode == 1 and "failed" in failed.stderr and "safety" in failed.stderr.lower()
    fake_gemini.push(fg.slow(8))
    busy = json.loads(inkq(api, "--json", "generate", "--operation", "ia-gen", "--prompt", "a rose").stdout)
    waiting = json.loads(inkq(api, "--json", "generate", "--operation", "ia-gen", "--prompt", "x").stdout)
    assert inkq(api, "cancel", waiting["jobId"]).stdout.strip() == f"{waiting['jobId']} canceled"
    assert inkq(api, "status", waiting["jobId"]).returncode == 1
    inkq(api, "cancel", busy["jobId"])


def test_usage_input_and_server_errors(api, tmp_path):
    assert inkq(api, "generate", str(tmp_path / "missing.jpg")).returncode == 2
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 64)
    refused = inkq(api, "generate", str(gif))
    assert refused.returncode == 2 and "not a JPEG, PNG or WebP" in refused.stderr
    assert inkq(api, "generate").returncode == 2  # a stencil needs a photo
    assert inkq(api, "frobnicate").returncode == 2
    assert inkq(api, "status", "0" * 32).returncode == 2  # 404 not_found
    bad = inkq(api, "credits", token="wrong")
    assert bad.returncode == 3 and "unauthenticated" in bad.stderr
    gone = inkq(api, "--url", "http://127.0.0.1:9", "credits")
    assert gone.returncode == 3 and "cannot reach" in gone.stderr
    for run in (refused, bad, gone):
        assert "Traceback" not in run.stderr


def test_progress_bar_on_a_terminal(gem_api, workers, fake_gemini):
    """In a pseudo-terminal `--wait` draws a bar that moves through the job's stages to 100%."""
    api = gem_api
    fake_gemini.push(fg.slow(2.5))
    pid, fd = pty.fork()
    if pid == 0:  # the child: inkq on the terminal
        os.environ.update({"INKQ_URL": api.url, "INKQ_TOKEN": "tok-alice", "COLUMNS": "100", "TERM": "xterm"})
        os.execv(INKQ, [INKQ, "generate", "--operation", "ia-gen", "--prompt", "a swallow", "--wait"])
    seen, deadline = b"", time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    _, status = os.waitpid(pid, 0)
    text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", seen).decode(errors="replace")
    assert os.WEXITSTATUS(status) == 0, text
    assert "━" in text  # rich's bar
    percents = [int(p) for p in re.findall(r"(\d+)%", text)]
    assert 25 in percents and 100 in percents and percents.index(25) < len(percents) - 1, percents
    assert "sending to Gemini" in text and "completed" in text


def test_download_sends_the_token_only_to_the_api(tmp_path):
    """A presigned URL of the S3 store carries its own signature; AWS S3 refuses a second
    authorization (400 InvalidArgument), and the token must not leave for another host anyway."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from api.client import Client

    seen: list[str | None] = []

    class Store(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"\x89PNG")

        def log_message(self, *args):
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Store) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api_url, store_url = (f"http://127.0.0.1:{s.server_port}" for s in servers)
        client = Client(api_url, "tok-alice")
        client.download(f"{store_url}/bucket/out/1?X-Amz-Signature=abc", str(tmp_path / "a.png"))
        client.download("/result/1", str(tmp_path / "b.png"))
        assert seen == [None, "Bearer tok-alice"]
        assert (tmp_path / "a.png").read_bytes() == b"\x89PNG"
    finally:
        for server in servers:
            server.shutdown()


def test_progress_line_says_where_the_job_stands():
    """The plain progress line (and `inkq status`, `inkq jobs`) with the status object's `queuePosition`
    and `etaS`: the place in line and the estimate while waiting, the estimate while active."""
    from api.client import _line, ordinal

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111, 112)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th", "112th"]
    waiting = {"jobId": "j1", "status": "waiting", "progress": 0, "stage": "queued", "queuePosition": 3, "etaS": 41.3}
    assert _line(waiting) == "j1 waiting, 3rd in line, about 40 s"
    assert _line(waiting | {"queuePosition": 1, "etaS": 6.4}) == "j1 waiting, next in line, about 6 s"
    assert _line(waiting | {"queuePosition": 12, "etaS": None}) == "j1 waiting, 12th in line"
    assert _line(waiting | {"queuePosition": None, "etaS": 0.2}) == "j1 waiting, about 1 s"
    assert _line(waiting | {"queuePosition": 40, "etaS": 250}) == "j1 waiting, 40th in line, about 4 min"
    assert _line(waiting | {"stage": "waiting to retry", "queuePosition": None, "etaS": 7}) == \
        "j1 waiting, waiting to retry, about 7 s"
    assert _line(waiting | {"queuePosition": None, "etaS": None}) == "j1 waiting 0% queued"
    old = {k: v for k, v in waiting.items() if k not in ("queuePosition", "etaS")}  # a server without them
    assert _line(old) == "j1 waiting 0% queued"
    active = {"jobId": "j1", "status": "active", "progress": 40, "stage": "sending to Gemini", "queuePosition": None,
              "etaS": 12.2}
    assert _line(active) == "j1 active 40% sending to Gemini, about 10 s left"
    assert _line(active | {"etaS": None}) == "j1 active 40% sending to Gemini"
    done = {"jobId": "j1", "status": "completed", "progress": 100, "stage": "done", "queuePosition": None, "etaS": None}
    assert _line(done) == "j1 completed 100% done"


def test_plain_progress_prints_a_line_when_the_place_in_line_changes(capsys):
    from api.client import Follower

    base = {"jobId": "j1", "status": "waiting", "progress": 0, "stage": "queued"}
    with Follower("lines") as follower:
        for position, eta in ((3, 41), (3, 41.5), (2, 30), (1, 18), (1, 17.9)):
            follower.show(base | {"queuePosition": position, "etaS": eta})
        follower.show(base | {"status": "active", "progress": 10, "stage": "running", "queuePosition": None,
                              "etaS": 6})
    assert capsys.readouterr().out.splitlines() == [
        "j1 waiting, 3rd in line, about 40 s", "j1 waiting, 2nd in line, about 30 s",
        "j1 waiting, next in line, about 20 s", "j1 active 10% running, about 6 s left"]


def test_wait_shows_the_place_in_line(gem_api, workers, fake_gemini):
    """With the only ia-gen slot busy, `--wait` shows the next job's place in line (and its estimate, when
    the server has one), then follows it to its end."""
    api = gem_api
    fake_gemini.push(fg.slow(2.5))   # below the workers' GEMINI_TIMEOUT_S
    inkq(api, "generate", "--operation", "ia-gen", "--prompt", "a rose")
    done = inkq(api, "generate", "--operation", "ia-gen", "--prompt", "a swallow", "--wait")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    placed = [line for line in lines if re.search(r" waiting, (next|\d+(st|nd|rd|th)) in line(, about \d+ (s|min))?$",
                                                  line)]
    assert placed, lines
    assert lines[-1].split()[1] == "completed:", lines


def test_erase_a_job_and_a_user(make_api, workers, tmp_path, user):
    """`inkq erase ID` erases a job of one's own (then it is unknown); `inkq erase --user` is the admin's."""
    import requests

    from tests.conftest import ADMIN_TOKEN

    api = make_api(API_KEYS=f"tok-{user}:{user}")
    token = f"tok-{user}"
    source = tmp_path / "d.png"
    source.write_bytes(drawing())
    final = json.loads(inkq(api, "--json", "generate", str(source), "--engine", "local", "--wait",
                            token=token).stdout.splitlines()[-1])
    job_id = final["jobId"]
    assert requests.get(final["result"]["image"], timeout=10).status_code == 200
    erased = inkq(api, "erase", job_id, token=token)
    assert erased.returncode == 0 and erased.stdout.strip() == f"{job_id} erased", erased.stderr
    assert requests.get(final["result"]["image"], timeout=10).status_code != 200   # 404s: test_json_output...

    kept = json.loads(inkq(api, "--json", "generate", str(source), "--engine", "local", token=token).stdout)
    refused = inkq(api, "erase", "--user", user, token=token)
    assert refused.returncode == 3 and "forbidden" in refused.stderr
    assert api.get(f"/status/{kept['jobId']}", token=token).status_code == 200   # nothing erased
    admin = inkq(api, "erase", "--user", user, token=ADMIN_TOKEN)
    assert admin.returncode == 0, admin.stderr
    assert re.fullmatch(rf"{user}: erased 1 job and \d+ objects?", admin.stdout.strip()), admin.stdout
    assert api.get(f"/status/{kept['jobId']}", token=token).status_code == 404
    usage = inkq(api, "erase", job_id, "--user", user, token=token)
    assert usage.returncode == 2 and "give a job id" in usage.stderr


def test_max_wait_and_retention_on_submit(gem_api, workers, fake_gemini):
    """`--max-wait-s` and `--retention-s` are sent as `maxWaitS` and `retentionS`: a job that cannot start
    within its wait ends canceled (exit 1, with the reason); a value the server refuses is a usage error."""
    api = gem_api
    fake_gemini.push(fg.slow(2.5), fg.slow(2.5))   # the one slot busy for 5 s
    busy = [json.loads(inkq(api, "--json", "generate", "--operation", "ia-gen", "--prompt", p).stdout)["jobId"]
            for p in ("a rose", "a moth")]
    late = inkq(api, "generate", "--operation", "ia-gen", "--prompt", "a koi", "--max-wait-s", "1",
                "--retention-s", "60", "--wait")
    assert late.returncode == 1 and " canceled: " in late.stderr, (late.stdout, late.stderr)
    for flag, value in (("--max-wait-s", "0"), ("--retention-s", "5")):
        bad = inkq(api, "generate", "--operation", "ia-gen", "--prompt", "x", flag, value)
        assert bad.returncode == 2 and "invalid_request" in bad.stderr, (flag, bad.stderr)
    assert inkq(api, "generate", "--max-wait-s", "soon").returncode == 2
    for job_id in busy:
        inkq(api, "cancel", job_id)
