"""Settings: every default written once (`tasks.core.settings.DEFAULTS`), the same as the contract's, and the
worker service's settings read once per process."""
from __future__ import annotations

import re
from pathlib import Path

from tasks.core import settings as worker_settings
from tasks.core.queues import WORKER_QUEUES
from tasks.core.settings import DEFAULTS, WorkerSettings

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "API.md"


def contract_defaults() -> dict[str, str]:
    """The literal defaults of API.md's configuration table (backticked or a number), by variable."""
    table = CONTRACT.read_text().split("## Configuration (environment)", 1)[1].split("\n## ", 1)[0]
    found = {}
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        values = re.findall(r"`[^`]*`|[^,`]+", cells[1])
        values = [value.strip() for value in values if value.strip()]
        if len(values) == 1:
            values = values * len(names)
        for name, value in zip(names, values) if len(values) == len(names) else ():
            found[name] = value
    return found


def same(code_default: object, documented: str) -> bool:
    if documented == "none":
        return not code_default
    if isinstance(code_default, bool):
        return documented.strip("`") == str(code_default).lower()
    if isinstance(code_default, (int, float)):
        return float(documented.strip("`")) == code_default
    return documented.strip("`") == code_default


def test_the_contracts_defaults_are_the_code_defaults():
    documented = contract_defaults()
    literal = {name: value for name, value in documented.items()
               if name in DEFAULTS and (value == "none" or value.startswith("`") or re.fullmatch(r"[\d.]+", value))}
    assert len(literal) >= 20, literal
    wrong = {name: (DEFAULTS[name], value) for name, value in literal.items() if not same(DEFAULTS[name], value)}
    assert not wrong


def test_worker_settings_take_every_default_from_the_table():
    assert WorkerSettings() == WorkerSettings.from_env({})
    assert WorkerSettings().concurrency == {spec.name: DEFAULTS[spec.concurrency_env] for spec in WORKER_QUEUES}
    given = WorkerSettings.from_env({"CONCURRENCY_STENCIL": "7", "CONCURRENCY_WEBHOOKS": "0", "WORKER_NICE": "40",
                                     "WEBHOOK_RETRY_S": "1, 2.5,,3", "RESULT_TTL_S": "", "ENGINE": "Local"})
    assert given.concurrency["stencil-generation"] == 7 and given.concurrency["webhooks"] == 1
    assert given.worker_nice == 19 and given.webhook_retry_s == (1, 2, 3)
    assert given.result_ttl_s == DEFAULTS["RESULT_TTL_S"] and given.engine == "local"


def test_secrets_stay_out_of_the_settings_repr():
    secrets = {"GEMINI_API_KEY": "AIza-secret-1", "SECRET_KEY": "signing-secret-2", "WEBHOOK_SECRET": "whsec_c2VjcmV0",
               "AWS_SECRET_ACCESS_KEY": "aws-secret-3", "AWS_ACCESS_KEY_ID": "aws-id-4"}
    text = repr(WorkerSettings.from_env(secrets))
    assert not [value for value in secrets.values() if value in text], text


def test_the_worker_settings_are_read_once_per_process(monkeypatch):
    """`current()` reads the environment on first use and never again; `use` replaces it (the supervisor)."""
    monkeypatch.setattr(worker_settings, "_current", None)
    monkeypatch.setenv("CONCURRENCY_ENHANCE", "6")
    first = worker_settings.current()
    assert first.concurrency["enhance"] == 6
    monkeypatch.setenv("CONCURRENCY_ENHANCE", "8")
    assert worker_settings.current() is first
    given = worker_settings.use(WorkerSettings(max_pixels=1000))
    assert worker_settings.current() is given
