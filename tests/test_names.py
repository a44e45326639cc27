"""Redis key names live in `tasks/core/keys.py` and Lua in `tasks/core/lua/*.lua`: no other module of api/ or
tasks/ spells an `inkq:` key (or one of rq's) or holds a `redis.call`, but those still listed below, which wait
for their turn (each listed module must still have one, so that the list only shrinks). The rq key names
the keys module spells are rq's own."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution, ExecutionRegistry
from rq.job import Job
from rq.queue import Queue
from rq.registry import CanceledJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from tasks.core import keys

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"\b(inkq|rq):[a-z{]")  # inkq's keys, and rq's that inkq's own code names
KEYS_MODULE = "tasks/core/keys.py"
KEYS_PENDING: set[str] = set()
LUA_PENDING: set[str] = set()


def modules() -> list[Path]:
    return sorted(p for top in ("api", "tasks") for p in (ROOT / top).rglob("*.py"))


def strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module but its docstrings (which may name a key to explain it)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_key_names_are_spelled_only_in_the_keys_module():
    found = {str(p.relative_to(ROOT)): [(n, s) for n, s in strings(p) if KEY.search(s)] for p in modules()}
    found = {path: hits for path, hits in found.items() if hits and path != KEYS_MODULE}
    assert set(found) - KEYS_PENDING == set(), {p: found[p] for p in set(found) - KEYS_PENDING}
    assert KEYS_PENDING - set(found) == set(), "moved: take these off KEYS_PENDING"


def test_lua_lives_in_lua_files():
    found = {str(p.relative_to(ROOT)) for p in modules() if any("redis.call" in s for _, s in strings(p))}
    assert found - LUA_PENDING == set()
    assert LUA_PENDING - found == set(), "moved: take these off LUA_PENDING"


def test_rq_key_names_are_rqs_own():
    """The sweep (`tasks/core/lua/sweep.lua`) and the end path build rq's keys themselves: a name that drifted
    from rq's would leave them walking keys nobody writes."""
    assert keys.job_key("j") == Job.key_for("j")
    assert keys.queue_key("q") == Queue.redis_queue_namespace_prefix + "q"
    assert keys.RQ_QUEUES_KEY == Queue.redis_queues_keys
    assert keys.started_key("q") == StartedJobRegistry.key_template.format("q")
    assert keys.failed_key("q") == FailedJobRegistry.key_template.format("q")
    assert keys.canceled_key("q") == CanceledJobRegistry.key_template.format("q")
    assert keys.scheduled_key("q") == ScheduledJobRegistry.key_template.format("q")
    assert keys.scheduler_lock_key("q") == RQScheduler.get_locking_key("q")
    assert keys.executions_key("j") == ExecutionRegistry.key_template.format("j")
    assert keys.execution_key("j:e") == Execution("e", "j", connection=None).key
    assert keys.rq_worker_key("w") == Worker.redis_worker_namespace_prefix + "w"
    assert keys.worker_executions_key("w") == WORKER_EXECUTIONS_KEY_TEMPLATE.format("w")
    assert keys.RQ_WORKERS_KEY == REDIS_WORKER_KEYS
    assert keys.rq_queue_workers_key("q") == WORKERS_BY_QUEUE_KEY % "q"
