"""The TypeScript client `@inkq/client` (clients/typescript/): its `node --test` suite against the real
API and workers (with real faults: lowered limits, refused and cut streams, a proxy that loses answers),
a Redis stopped under `waitForJob`, large photos through a real S3 (SeaweedFS), its types against the
app's /openapi.json, its examples and READMEs compiled as an app would use them, and its package as
`npm pack` builds it.

`npm ci` installs its dev dependencies from package-lock.json once per session (skipped while
node_modules is newer than the lock); dist/ is built here, by `npm pack` (its prepack script runs
tsc), and never committed.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis as redis_lib
from PIL import Image

from tests.conftest import Api, base_config, photo
from tests.fakegemini import ok, slow
from tests.servers import ApiServer, RedisServer, Workers, die_with_parent, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "clients", "typescript")
NODE_TESTS = ["test/client.test.mjs", "test/resilience.test.mjs", "test/react.test.mjs"]
NODE_TEST_COUNT = 18
TEST_FILES = ("client", "net", "react", "s3")  # each node test file's own user (test/env.mjs: tokenFor)
GZIP_BUDGET = 10 * 1024  # dist/*.js together, gzipped, comments kept: no dependency, so it stays small

pytestmark = pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")),
                                reason="node and npm are not installed (apt-get install nodejs npm)")


def _npm(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run(["npm", *args], cwd=PACKAGE, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"npm {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="session")
def packed(tmp_path_factory):
    """`npm pack`'s report on the package it built (its prepack script runs tsc into dist/), after
    `npm ci` when node_modules is older than the lock. Under pytest-xdist the run's processes share one
    pack: the first builds it, holding a file lock (two `npm ci` in the same node_modules fail with
    ENOTEMPTY, and a second pack would rewrite dist/ under the other process's node tests); the others
    read its report."""
    import fcntl
    import hashlib
    import tempfile

    lock = os.path.join(PACKAGE, "package-lock.json")
    marker = os.path.join(PACKAGE, "node_modules", ".package-lock.json")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.getbasetemp().parent / "npm-pack"  # the run's, shared by its processes
    else:
        out = tmp_path_factory.mktemp("npm-pack")
    where = os.path.join(tempfile.gettempdir(), f"inkq-npm-{hashlib.sha256(PACKAGE.encode()).hexdigest()[:12]}.lock")
    with open(where, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        saved = out / "report.json"
        if saved.exists():
            report = json.loads(saved.read_text())
        else:
            if not os.path.exists(marker) or os.path.getmtime(marker) < os.path.getmtime(lock):
                _npm("ci", "--no-audit", "--no-fund")
            out.mkdir(exist_ok=True)
            report = json.loads(_npm("pack", "--json", "--pack-destination", str(out)).stdout)[0]
            saved.write_text(json.dumps(report))
    report["tarball"] = out / report["filename"]
    return report


@pytest.fixture
def package(packed):
    """The package directory, dist/ built."""
    return PACKAGE


def _keys(user: str) -> str:
    """API_KEYS giving each node test file a user of its own: `tok-<user>-<file>`."""
    return ",".join(f"tok-{user}-{name}:{user}{name}" for name in TEST_FILES)


def _node(package, files, env, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(["node", "--test", "--test-concurrency=1", "--test-timeout=60000", *files], cwd=package,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def _flat_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


def test_types_are_generated_from_the_current_spec(package, tmp_path):
    fresh = tmp_path / "schema.ts"
    venv = os.path.dirname(os.path.dirname(sys.executable))   # this interpreter builds the spec
    subprocess.run([os.path.join(ROOT, "scripts", "ts_types.sh"), str(fresh)], check=True, timeout=120,
                   env={**os.environ, "VENV": venv})
    committed = open(os.path.join(package, "src", "schema.ts"), encoding="utf-8").read()
    assert fresh.read_text() == committed, "clients/typescript/src/schema.ts is stale: run `npm run generate` there"


def test_node_suite_against_the_real_api(package, make_api, workers, fake_gemini, tmp_path):
    """Each API below is the real app on the session's Redis and workers, with the setting a test needs
    (the first sends a stream heartbeat every 0.5 s). ia-gen jobs take 2.5 s in the fake provider, so a
    stream can be cut or silenced while one runs."""
    user = "u" + uuid.uuid4().hex[:10]
    common = {"API_KEYS": _keys(user), "GEMINI_API_KEY": "test-key", "GEMINI_BASE_URL": fake_gemini.url}
    fake_gemini.default = slow(2.5, ok())
    (tmp_path / "photo.jpg").write_bytes(photo((128, 128)))
    (tmp_path / "flat.png").write_bytes(_flat_png())
    env = {"INKQ_URL": make_api(**common, EVENTS_POLL_S=0.5).url,
           "INKQ_URL_NO_STREAMS": make_api(**common, MAX_STREAMS_PER_USER=0).url,
           "INKQ_URL_SHORT_STREAMS": make_api(**common, EVENTS_MAX_S=1).url,
           "INKQ_URL_LOW_LIMITS": make_api(**common, RATE_LIMIT="1/second", READ_RATE_LIMIT="3/second").url,
           "INKQ_TOKEN": f"tok-{user}", "INKQ_PHOTO": str(tmp_path / "photo.jpg"),
           "INKQ_FLAT": str(tmp_path / "flat.png")}
    done = _node(package, NODE_TESTS, env)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
    assert f"# pass {NODE_TEST_COUNT}" in done.stdout, done.stdout[-3000:]


class _Lines:
    """A process's stdout as JSON lines, read in a thread as they come."""

    def __init__(self, proc):
        self.lines: list[dict] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(json.loads(line))


def test_wait_for_job_survives_redis_stopped_for_5_s(package, tmp_path):
    """While `waitForJob` follows a job by polling (the API refuses streams), Redis is stopped for 5 s
    (SHUTDOWN SAVE) and started again with its data; the workers start after, so the job is still
    waiting through the outage. The polls answered 503 `unavailable` are retried after their Retry-After."""
    from api import create_app

    server = RedisServer()
    user = "u" + uuid.uuid4().hex[:10]
    api = ApiServer(create_app(base_config(server.url, API_KEYS=f"tok-{user}:{user}", MAX_STREAMS_PER_USER=0)))
    service = proc = None
    try:
        job_id = Api(api.url).submit(photo((96, 96)), token=f"tok-{user}", engine="local").json()["jobId"]
        proc = subprocess.Popen(["node", "test/follow.mjs", job_id], cwd=package, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "INKQ_URL": api.url, "INKQ_TOKEN": f"tok-{user}"})
        out = _Lines(proc)
        wait_until(lambda: {"status": "waiting"} in out.lines or proc.poll() is not None, timeout=30,
                   what="the first status")
        assert proc.poll() is None, f"{out.lines}\n{proc.stderr.read()[-3000:]}"
        redis_lib.Redis.from_url(server.url).shutdown(save=True)
        server.proc.wait(10)
        time.sleep(5)
        server.proc = subprocess.Popen(server.proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       preexec_fn=die_with_parent)
        wait_until(lambda: RedisServer._ping(redis_lib.Redis.from_url(server.url)), what="redis-server again")
        service = Workers({"REDIS_URL": server.url, "CONCURRENCY_STENCIL": "1", "CONCURRENCY_ENHANCE": "1",
                           "CONCURRENCY_IA_GEN": "1", "CONCURRENCY_COLOR_MATCH": "1", "CONCURRENCY_WEBHOOKS": "1",
                           "LOG_LEVEL": "WARNING"}, str(tmp_path / "workers.log"))
        proc.wait(60)
        assert proc.returncode == 0, f"{out.lines}\n{proc.stderr.read()[-3000:]}"
        assert out.lines[-1] == {"done": "completed"}, out.lines
        retried = [line for line in out.lines if "retry" in line]
        assert any(line["code"] == "unavailable" and line["delayMs"] >= 5000 for line in retried), out.lines
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        if service is not None:
            service.stop()
        api.stop()
        server.stop()


def test_large_photos_go_straight_to_the_object_store(package, make_s3_api, s3_workers, tmp_path):
    """test/uploads.test.mjs against the S3 store on SeaweedFS, with a photo of more than 1 MiB."""
    user = "u" + uuid.uuid4().hex[:10]
    noisy = Image.effect_noise((1200, 1200), 64).convert("RGB")  # about 1.3 MB as JPEG
    buf = io.BytesIO()
    noisy.save(buf, "JPEG", quality=95)
    (tmp_path / "big.jpg").write_bytes(buf.getvalue())
    env = {"INKQ_URL": make_s3_api(API_KEYS=_keys(user)).url, "INKQ_TOKEN": f"tok-{user}",
           "INKQ_PHOTO": str(tmp_path / "big.jpg")}
    done = _node(package, ["test/uploads.test.mjs"], env)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
    assert "# pass 3" in done.stdout, done.stdout[-3000:]


def _readme_blocks(path: str) -> list[str]:
    """The ts/tsx code blocks of a Markdown file."""
    text = pathlib.Path(path).read_text(encoding="utf-8")
    return re.findall(r"^```(?:ts|tsx|typescript)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_examples_compile_with_tsc_strict_as_an_app_uses_the_package(package, packed, tmp_path):
    """examples/app.tsx (every function and the hook) and every ts/tsx block of the client's README and of
    the main README, compiled with `tsc --noEmit --strict` in an app that installed the packed tarball,
    with a bundler's module resolution (Vite's and Next's) and their skipLibCheck (the package's own
    .d.ts come from sources compiled under --strict)."""
    app = tmp_path / "app"
    modules = app / "node_modules"
    installed = modules / "@inkq" / "client"
    installed.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(packed["tarball"]), "-C", str(installed), "--strip-components=1"], check=True)
    for name in ("@types", "csstype", "react"):   # what an app with React has installed itself
        os.symlink(os.path.join(package, "node_modules", name), modules / name)
    src = app / "src"
    src.mkdir()
    for name in ("app.tsx", "globals.d.ts"):
        shutil.copy(os.path.join(package, "examples", name), src / name)
    blocks = {"client": _readme_blocks(os.path.join(package, "README.md")),
              "main": _readme_blocks(os.path.join(ROOT, "README.md"))}
    assert len(blocks["client"]) >= 4
    for where, found in blocks.items():
        for n, code in enumerate(found):
            (src / f"readme-{where}-{n}.tsx").write_text(code + "\nexport {};\n")
    (app / "package.json").write_text(json.dumps({"name": "app", "private": True, "type": "module"}))
    (app / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "target": "ES2022", "module": "ESNext",
                            "moduleResolution": "Bundler", "jsx": "react-jsx", "lib": ["ES2022", "DOM", "DOM.Iterable"],
                            "types": ["node"], "skipLibCheck": True},
        "include": ["src"]}))
    done = subprocess.run([os.path.join(package, "node_modules", ".bin", "tsc"), "-p", str(app)], cwd=app,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_npm_pack_ships_dist_and_types_without_runtime_dependencies(package, packed, tmp_path):
    manifest = json.load(open(os.path.join(package, "package.json")))
    assert "dependencies" not in manifest and manifest["peerDependenciesMeta"]["react"]["optional"]
    files = {f["path"] for f in packed["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/react.js", "dist/react.d.ts", "dist/schema.d.ts",
            "package.json", "README.md"} <= files
    assert not any(f.startswith(("src/", "test/", "examples/", "node_modules/")) for f in files), files
    core = open(os.path.join(package, "dist", "index.js"), encoding="utf-8").read()
    assert not re.search(r"""(from|import)\s*\(?\s*["']react""", core), "the core must not import React"
    scripts = sorted(f for f in files if f.endswith(".js"))
    gzipped = len(gzip.compress(b"".join(pathlib.Path(package, f).read_bytes() for f in scripts), 9))
    print(f"@inkq/client: {len(scripts)} scripts, {gzipped} bytes gzipped together; tarball {packed['size']} bytes")
    assert gzipped <= GZIP_BUDGET, f"dist/*.js is {gzipped} bytes gzipped (budget {GZIP_BUDGET})"
    # Installed from the tarball alone (no registry, no React), the core imports by its package name.
    installed = tmp_path / "app" / "node_modules" / "@inkq" / "client"
    installed.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(packed["tarball"]), "-C", str(installed), "--strip-components=1"],
                   check=True)
    script = "import {createClient, InkqError} from '@inkq/client'; " \
             "console.log(typeof createClient({baseUrl: 'http://x'}).waitForJob, new InkqError('m', 'c', 1).code)"
    done = subprocess.run(["node", "--input-type=module", "-e", script], cwd=tmp_path / "app", capture_output=True,
                          text=True, timeout=30)
    assert done.stdout.strip() == "function c", done.stderr
