"""Both services refuse to start on an unsafe PUBLIC_URL or SECRET_KEY: exit status 2
and a message naming the setting, from scripts/start_api.sh and scripts/start_workers.sh as deployed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import ROOT, free_port

REFUSED = {  # name: (environment, what the message says)
    "a path": ({"PUBLIC_URL": "https://api.example.com/v1"}, b"PUBLIC_URL must be like https://api.example.com"),
    "credentials": ({"PUBLIC_URL": "https://ops:hunter2@api.example.com"}, b"PUBLIC_URL must be like"),
    "port 99999": ({"PUBLIC_URL": "https://api.example.com:99999"}, b"PUBLIC_URL must be like"),
    "a 3-byte key": ({"SECRET_KEY": "abc"}, b"SECRET_KEY must be at least 32 random bytes"),
    "a 31-byte key": ({"SECRET_KEY": "k" * 31}, b"SECRET_KEY must be at least 32 random bytes"),
}


def _start(script: str, redis_url: str, **extra) -> subprocess.Popen:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "REDIS_URL": redis_url, "PORT": str(free_port()), "API_KEYS": "tok:someone", "SECRET_KEY": "k" * 32,
           "PUBLIC_URL": "", "INKQ_DEV": "", "LOG_FORMAT": "text", **extra}
    return subprocess.Popen([os.path.join(ROOT, "scripts", script)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


@pytest.mark.parametrize("script", ["start_api.sh", "start_workers.sh"])
def test_a_service_refuses_to_start_on_an_unsafe_public_url_or_secret_key(redis_url, script):
    started = {name: _start(script, redis_url, **env) for name, (env, _) in REFUSED.items()}  # at once: seconds
    for name, proc in started.items():
        try:
            output, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 2, (name, proc.returncode, output[-2000:])
        assert REFUSED[name][1] in output, (name, output[-2000:])
        assert b"hunter2" not in output, "the credentials were logged"


@pytest.mark.parametrize("value, origin", [
    ("https://api.example.com", "https://api.example.com"),
    ("https://api.example.com/", "https://api.example.com"),
    (" HTTPS://API.Example.com:8443 ", "https://api.example.com:8443"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://[::1]:8000", "http://[::1]:8000"),
])
def test_an_origin_is_kept(value, origin):
    from tasks.core.links import checked_origin

    assert checked_origin(value) == origin


@pytest.mark.parametrize("value", [
    "https://api.example.com/v1", "https://api.example.com//", "https://u@api.example.com",
    "https://api.example.com:0", "https://api.example.com:65536", "https://api.example.com:", "https://api.example.com:0443",
    "https://api.example.com?", "https://api.example.com#top", "https://", "ftp://api.example.com", "api.example.com",
    "https://-api.example.com", "https://api..example.com", "https://api example.com", "http://[::1%eth0]:80",
    "https://api.example.com\\@evil.example",
])
def test_anything_else_is_not_an_origin(value):
    from tasks.core.links import checked_origin

    with pytest.raises(ValueError, match="PUBLIC_URL must be like"):
        checked_origin(value)


def test_a_short_key_is_accepted_only_in_development(redis_url):
    from api import ConfigError, create_app
    from tests.conftest import base_config

    with pytest.raises(ConfigError, match="SECRET_KEY must be at least 32"):
        create_app(base_config(redis_url, SECRET_KEY="k" * 31, INKQ_DEV=""))
    app = create_app(base_config(redis_url, SECRET_KEY="dev", INKQ_DEV="1"))
    app.extensions["inkq"].hub.stop()
