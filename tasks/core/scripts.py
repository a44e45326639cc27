"""Lua scripts as `.lua` files in `tasks/core/lua/`, loaded by name, as Dramatiq keeps `dispatch.lua`: a
reader opens a script with its syntax colouring and finds every script in one folder.

A script's header comment says its KEYS, ARGV and answer. A line `-- include: <name>` is replaced by
`<name>.lua`, for functions several scripts share (`settle_charge`); a file is included once per script
however often it is named. The files ship as package data (setup.cfg, `tasks.core = lua/*.lua`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

LUA = resources.files(__package__).joinpath("lua")
NAME = re.compile(r"[a-z0-9_]+")
INCLUDE = re.compile(r"^-- include: (\S+)[ \t]*$", re.M)


@lru_cache(maxsize=None)
def load(name: str) -> str:
    """The source of `lua/<name>.lua` with its includes in place; ValueError for a name that is no script's."""
    return assemble(LUA, name)


def assemble(folder, name: str, seen: set[str] | None = None) -> str:
    """The script `<name>.lua` of `folder` (a path or a package's resource folder), its includes in place."""
    seen = set() if seen is None else seen
    if not NAME.fullmatch(name):
        raise ValueError(f"not a script name: {name!r}")
    if name in seen:
        return ""
    seen.add(name)
    path = folder.joinpath(f"{name}.lua")
    if not path.is_file():
        raise ValueError(f"no script {name!r} in {folder}")
    return INCLUDE.sub(lambda m: assemble(folder, m.group(1), seen), path.read_text(encoding="utf-8"))
