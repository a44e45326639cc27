"""Redis settings that can lose jobs are named at start, by the workers and by the API."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.core import durability
from tests.servers import ROOT, RedisServer, free_port, wait_until


@pytest.fixture(scope="module")
def risky_redis():
    server = RedisServer("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def safe_redis():
    server = RedisServer("--appendonly", "yes", "--maxmemory-policy", "noeviction")
    yield server
    server.stop()


def test_eviction_and_no_persistence_are_named(risky_redis):
    found = durability.problems(redis_lib.Redis.from_url(risky_redis.url))
    assert len(found) == 2
    assert "allkeys-lru" in found[0] and "noeviction" in found[0]
    assert "neither AOF nor RDB" in found[1]


def test_make_run_is_only_told_about_eviction(risky_redis):
    found = durability.problems(redis_lib.Redis.from_url(risky_redis.url), dev=True)
    assert len(found) == 1 and "allkeys-lru" in found[0]


def test_a_durable_redis_raises_nothing(safe_redis):
    assert durability.problems(redis_lib.Redis.from_url(safe_redis.url)) == []
    snapshots = RedisServer("--save", "60 1")  # RDB alone counts as persistence
    try:
        assert durability.problems(redis_lib.Redis.from_url(snapshots.url)) == []
    finally:
        snapshots.stop()


def test_an_unreachable_redis_is_logged_not_fatal(caplog):
    with caplog.at_level("WARNING"):
        nowhere = redis_lib.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        assert durability.warn_if_unsafe(nowhere) == []
    assert "could not read the Redis configuration" in caplog.text


def _env(**extra):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], "INKQ_DEV": ""}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_both_services_warn_at_start(risky_redis, tmp_path):
    workers_log, api_log = tmp_path / "workers.log", tmp_path / "api.log"
    with open(workers_log, "wb") as wlog, open(api_log, "wb") as alog:
        workers = subprocess.Popen([os.path.join(ROOT, "scripts", "start_workers.sh")], cwd=ROOT, stdout=wlog,
                                   stderr=subprocess.STDOUT, start_new_session=True, env=_env(
                                       REDIS_URL=risky_redis.url, CONCURRENCY_STENCIL=1, CONCURRENCY_ENHANCE=1,
                                       CONCURRENCY_IA_GEN=1, CONCURRENCY_COLOR_MATCH=1))
        api = subprocess.Popen([os.path.join(ROOT, "scripts", "start_api.sh")], cwd=ROOT, stdout=alog,
                               stderr=subprocess.STDOUT, start_new_session=True, env=_env(
                                   REDIS_URL=risky_redis.url, HOST="127.0.0.1", PORT=free_port(),
                                   API_KEYS="t:u", SECRET_KEY="k" * 32, WEB_CONCURRENCY=1, LOG_FORMAT="text"))
        try:
            for log in (workers_log, api_log):
                wait_until(lambda: b"neither AOF nor RDB" in log.read_bytes(), timeout=60,
                           what=f"the persistence warning in {log.name}")
                assert b"maxmemory-policy is allkeys-lru" in log.read_bytes()
        finally:
            for proc in (workers, api):
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
