"""`/openapi.json` names its operations: every one has an operationId, a tag and a summary, and a
client generated from it with openapi-python-client has methods by those names that work."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

OPERATION_IDS = {
    ("post", "/generate"): "createJob",
    ("get", "/status/{jobId}"): "getJob",
    ("get", "/status/{jobId}/events"): "streamJobEvents",
    ("get", "/result/{jobId}"): "getJobResult",
    ("get", "/files/{token}"): "getResultFile",
    ("get", "/jobs"): "listJobs",
    ("delete", "/jobs/{jobId}"): "cancelJob",
    ("delete", "/jobs/{jobId}/data"): "deleteJobData",
    ("get", "/credits"): "getCredits",
    ("post", "/uploads"): "createUpload",
    ("get", "/admin/queue-stats"): "getQueueStats",
    ("post", "/admin/credits/{userId}"): "setCredits",
    ("delete", "/admin/users/{userId}/data"): "deleteUserData",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
    ("get", "/metrics"): "getMetrics",
}


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@pytest.fixture
def spec(api):
    return api.get("/openapi.json", token=None).json()


def test_every_operation_has_an_id_a_tag_and_a_summary(spec):
    declared = {tag["name"] for tag in spec["tags"]}
    found = {}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert operation["summary"].strip(), (method, path)
            assert operation["tags"] and set(operation["tags"]) <= declared, (method, path)
            found[(method, path)] = operation["operationId"]
    assert len(set(found.values())) == len(found), "operationIds must be unique"
    expected = {key: name for key, name in OPERATION_IDS.items() if key in found}
    assert found == expected, "an operation has an unexpected operationId, or one is missing from OPERATION_IDS"


def test_generated_python_client_has_the_operations_by_name(api, spec, tmp_path):
    import json

    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "config.yaml").write_text("post_hooks: []\nproject_name_override: inkq_generated\n"
                                          "package_name_override: inkq_generated\n")
    binary = os.path.join(os.path.dirname(sys.executable), "openapi-python-client")
    done = subprocess.run([binary, "generate", "--path", "spec.json", "--meta", "none", "--config", "config.yaml",
                           "--output-path", "inkq_generated"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        client_module = importlib.import_module("inkq_generated.client")
        modules = {}
        for (method, path), name in OPERATION_IDS.items():
            if path not in spec["paths"]:
                continue
            tag = spec["paths"][path][method]["tags"][0]
            modules[name] = importlib.import_module(f"inkq_generated.api.{tag}.{_snake(name)}")
            assert callable(modules[name].sync_detailed), name
        client = client_module.AuthenticatedClient(base_url=api.url, token="tok-alice")
        credits = modules["getCredits"].sync(client=client)
        assert credits.enabled is False and isinstance(credits.balance, int)
        missing = modules["getJob"].sync_detailed("0123456789abcdef", client=client)
        assert missing.status_code == 404 and missing.parsed.code == "not_found"
        assert modules["listJobs"].sync(client=client, limit=1).jobs is not None
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("inkq_generated")]:
            del sys.modules[name]
