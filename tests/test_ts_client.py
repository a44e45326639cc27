"""The TypeScript client `@inkq/client` (clients/typescript/): its `node --test` suite against the real
API and workers, its types against the app's /openapi.json, and its package as `npm pack` builds it.

`npm ci` installs its dev dependencies from package-lock.json once per session (skipped while
node_modules is newer than the lock); dist/ is built here, by `npm pack` (its prepack script runs
tsc), and never committed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.conftest import photo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "clients", "typescript")
NODE_TESTS = ["test/client.test.mjs", "test/react.test.mjs"]
NODE_TEST_COUNT = 8

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
    `npm ci` when node_modules is older than the lock."""
    import fcntl
    import hashlib
    import tempfile

    lock = os.path.join(PACKAGE, "package-lock.json")
    marker = os.path.join(PACKAGE, "node_modules", ".package-lock.json")
    out = tmp_path_factory.mktemp("npm-pack")
    # one pytest-xdist process at a time: two `npm ci` in the same node_modules fail (ENOTEMPTY)
    where = os.path.join(tempfile.gettempdir(), f"inkq-npm-{hashlib.sha256(PACKAGE.encode()).hexdigest()[:12]}.lock")
    with open(where, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if not os.path.exists(marker) or os.path.getmtime(marker) < os.path.getmtime(lock):
            _npm("ci", "--no-audit", "--no-fund")
        report = json.loads(_npm("pack", "--json", "--pack-destination", str(out)).stdout)[0]
    report["tarball"] = out / report["filename"]
    return report


@pytest.fixture
def package(packed):
    """The package directory, dist/ built."""
    return PACKAGE


def test_types_are_generated_from_the_current_spec(package, tmp_path):
    fresh = tmp_path / "schema.ts"
    venv = os.path.dirname(os.path.dirname(sys.executable))   # this interpreter builds the spec
    subprocess.run([os.path.join(ROOT, "scripts", "ts_types.sh"), str(fresh)], check=True, timeout=120,
                   env={**os.environ, "VENV": venv})
    committed = open(os.path.join(package, "src", "schema.ts"), encoding="utf-8").read()
    assert fresh.read_text() == committed, "clients/typescript/src/schema.ts is stale: run `npm run generate` there"


def test_node_suite_against_the_real_api(package, make_api, workers, tmp_path):
    user = "u" + uuid.uuid4().hex[:10]
    api = make_api(API_KEYS=f"tok-{user}:{user}")
    (tmp_path / "photo.jpg").write_bytes(photo((128, 128)))
    env = {"INKQ_URL": api.url, "INKQ_TOKEN": f"tok-{user}", "INKQ_PHOTO": str(tmp_path / "photo.jpg")}
    done = subprocess.run(["node", "--test", *NODE_TESTS], cwd=package, capture_output=True, text=True, timeout=240,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert f"# pass {NODE_TEST_COUNT}" in done.stdout, done.stdout[-3000:]


def test_npm_pack_builds_a_package_without_runtime_dependencies(package, packed, tmp_path):
    manifest = json.load(open(os.path.join(package, "package.json")))
    assert "dependencies" not in manifest and manifest["peerDependenciesMeta"]["react"]["optional"]
    files = {f["path"] for f in packed["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "dist/react.js", "dist/react.d.ts", "dist/schema.d.ts",
            "package.json"} <= files
    assert not any(f.startswith(("test/", "node_modules/")) for f in files)
    core = open(os.path.join(package, "dist", "index.js"), encoding="utf-8").read()
    assert not re.search(r"""(from|import)\s*\(?\s*["']react""", core), "the core must not import React"
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
