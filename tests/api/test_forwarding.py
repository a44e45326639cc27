"""Forwarded headers count only from configured proxies, and PUBLIC_URL alone decides the origin of
signed URLs when it is set (api/forwarding.py); over real HTTP, on a job completed by real workers."""
from __future__ import annotations

import pytest

from tests.conftest import drawing

FORGED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


@pytest.fixture(scope="module")
def completed(redis_url, workers):
    """A completed job of alice's."""
    from api import create_app
    from tests.conftest import Api, base_config
    from tests.servers import ApiServer

    server = ApiServer(create_app(base_config(redis_url)))
    try:
        api = Api(server.url)
        job_id = api.submit(drawing((96, 96)), engine="local").json()["jobId"]
        assert api.wait(job_id)["status"] == "completed"
    finally:
        server.stop()
    return job_id


def images(api, job_id: str, **headers) -> list[str]:
    """result.image as the fast path, the jobs list and the event stream give it."""
    fast = api.get(f"/status/{job_id}", headers=headers).json()["result"]["image"]
    listed = [j for j in api.get("/jobs?status=completed&limit=100", headers=headers).json()["jobs"]
              if j["jobId"] == job_id][0]["result"]["image"]
    stream = api.get(f"/status/{job_id}/events", headers=headers).text
    streamed = stream.split('"image": "', 1)[1].split('"', 1)[0]
    return [fast, listed, streamed]


def test_forwarded_headers_from_a_peer_that_is_no_proxy_are_ignored(make_api, completed):
    api = make_api(FORWARDED_ALLOW_IPS="10.1.2.3,fd00::/8")
    for image in images(api, completed, **FORGED):
        assert image.startswith(api.url + "/files/"), image
    assert api.get(f"/files/{image.rsplit('/', 1)[1]}", token=None).status_code == 200


def test_forwarded_headers_from_a_configured_proxy_are_applied(make_api, completed):
    api = make_api(FORWARDED_ALLOW_IPS="127.0.0.0/8")
    for image in images(api, completed, **FORGED):
        assert image.startswith("https://evil.example/files/"), image


def test_public_url_decides_the_origin_whatever_the_headers(make_api, completed):
    api = make_api(FORWARDED_ALLOW_IPS="*", PUBLIC_URL="https://api.inkq.example/")
    for image in images(api, completed, Host="evil.example", **FORGED):
        assert image.startswith("https://api.inkq.example/files/"), image


@pytest.mark.parametrize("name, value", [("PUBLIC_URL", "api.example.com"), ("PUBLIC_URL", "ftp://x.example"),
                                         ("FORWARDED_ALLOW_IPS", "10.0.0.0/33"), ("FORWARDED_ALLOW_IPS", "proxy")])
def test_bad_proxy_settings_stop_the_start(redis_url, name, value):
    from api import ConfigError, create_app
    from tests.conftest import base_config

    with pytest.raises(ConfigError, match=name):
        create_app(base_config(redis_url, **{name: value}))
