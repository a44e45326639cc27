"""The served API against its own `/openapi.json`, with the schemathesis CLI (property-based, stateful).

Checks: no 5xx that the spec does not document, only documented status codes and content types, and
response bodies that match their schemas. `positive_data_acceptance` is left out on purpose: a
schema-valid random base64 string is rightly refused as "not an image".

The server has a provider key so `ia-gen` is accepted instead of answering 503 (no worker runs: jobs
wait in the queue), and event streams give up after a fraction of a second since those jobs never end.
`tok-alice` maps to a fresh user whose waiting jobs are canceled afterwards.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

from tests.servers import RedisServer

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
MAX_EXAMPLES = 40
SEED = 20261128


def _schemathesis(api, token: str, tmp_path, *extra: str) -> tuple[str, int]:
    """Run `schemathesis run` on the served spec; returns its output and the number of test cases."""
    binary = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    command = [binary, "run", api.url + "/openapi.json", "-H", f"Authorization: Bearer {token}", "--checks", CHECKS,
               "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
               "--request-timeout", "10", "--no-color", *extra]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"schemathesis found failures (exit {done.returncode}):\n{output[-12000:]}"
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-3000:]
    return output, int(generated.group(1))


def _cancel_waiting(api) -> None:
    while True:
        jobs = api.get("/jobs?limit=100&status=waiting").json()["jobs"]
        if not jobs:
            return
        for job in jobs:
            api.delete(f"/jobs/{job['jobId']}")


def test_api_conforms_to_its_openapi_spec(make_api, tmp_path):
    # Its own Redis with no workers: the jobs it submits wait, and never reach the shared fake
    # Gemini or the other tests' workers.
    redis_server = RedisServer()
    api = make_api(REDIS_URL=redis_server.url, API_KEYS=f"tok-alice:schemathesis-{uuid.uuid4().hex[:8]},tok-bob:bob",
                   MAX_INFLIGHT_PER_USER=100000, RATE_LIMIT="100000/minute", QUEUE_MAX_DEPTH=100000,
                   GEMINI_API_KEY="never-called-by-the-api", EVENTS_MAX_S=0.3, EVENTS_POLL_S=0.05)
    try:
        output, cases = _schemathesis(api, "tok-alice", tmp_path, "--exclude-path-regex", "^/admin/")
        operations = re.search(r"Selected: (\d+)/(\d+)", output)
        assert operations and int(operations.group(1)) >= 10, output[-3000:]
        assert cases >= 10 * MAX_EXAMPLES, output[-3000:]
        admin_output, admin_cases = _schemathesis(api, "admin-secret-token", tmp_path,
                                                  "--include-path-regex", "^/admin/")
        assert re.search(r"Selected: 3/", admin_output), admin_output[-3000:]
        print(f"schemathesis: {operations.group(1)} operations, {cases} cases as a user; 3 admin operations, "
              f"{admin_cases} cases as the admin")
    finally:
        _cancel_waiting(api)
        redis_server.stop()
