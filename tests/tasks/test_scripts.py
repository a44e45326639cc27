"""The Lua scripts as files (`tasks/core/scripts.py`): includes put in place once, names checked, and every
script compiled by a real Redis (`SCRIPT LOAD` refuses a script that does not parse)."""
from __future__ import annotations

from importlib import resources

import pytest
from redis.exceptions import ResponseError

from tasks.core import scripts

NAMES = sorted(p.name.removesuffix(".lua") for p in resources.files("tasks.core").joinpath("lua").iterdir()
               if p.name.endswith(".lua"))


def test_an_include_puts_the_shared_function_in_once():
    source = scripts.load("settle_unqueued")
    assert source.count("local function settle_charge(") == 1
    assert "-- include:" not in source
    assert source.index("local function settle_charge(") < source.index("return settle_charge(")


def test_a_file_named_twice_is_included_once(tmp_path):
    (tmp_path / "f.lua").write_text("local function f() return 1 end\n")
    (tmp_path / "g.lua").write_text("-- include: f\nlocal function g() return f() end\n")
    (tmp_path / "main.lua").write_text("-- include: f\n-- include: g\n-- include: main\nreturn g()\n")
    source = scripts.assemble(tmp_path, "main")
    assert source.count("local function f()") == 1 and source.count("local function g()") == 1
    assert source.endswith("return g()\n")


@pytest.mark.parametrize("name", ["../lua/settle", "nope", "settle.lua", "", "Settle"])
def test_a_name_that_is_no_script_is_refused(name):
    with pytest.raises(ValueError):
        scripts.load(name)


@pytest.mark.parametrize("name", NAMES)
def test_every_script_compiles_in_redis(redis, name):
    try:
        sha = redis.script_load(scripts.load(name))
    except ResponseError as exc:  # the message names the line that does not parse
        pytest.fail(f"{name}.lua: {exc}")
    assert redis.script_exists(sha) == [True]
