"""Redis key names live in `tasks/core/keys.py` and Lua in `tasks/core/lua/*.lua`: no other module of api/ or
tasks/ spells an `inkq:` key or holds a `redis.call`, but those still listed below, which wait for their turn
(each listed module must still have one, so that the list only shrinks)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = re.compile(r"\binkq:[a-z{]")
KEYS_MODULE = "tasks/core/keys.py"
# Not yet moved: their callers are rewritten by the end-of-job work first.
KEYS_PENDING = {"tasks/core/blobs.py", "tasks/core/changes.py", "tasks/core/credits.py",
                "tasks/core/metrics.py", "tasks/runtime/recovery.py"}
LUA_PENDING = {"api/admission.py", "tasks/runtime/recovery.py"}


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
