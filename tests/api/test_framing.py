"""Request framing on the deployed server (scripts/start_api.sh: gunicorn, gevent workers), over raw sockets.

A proxy in front and the API must agree where each request ends; where they could disagree, the API
answers 400 `invalid_request` and closes the connection (RFC 9112 §6.1, §6.3; `api/server.py`). Each
hostile request below carries a second request after what a proxy framing by `Content-Length` (or by
`Transfer-Encoding`) would take as its end: `GET /admin/queue-stats` without credentials, which would
answer 401 if it were ever served.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from tests.servers import GunicornApi

SMUGGLED = b"GET /admin/queue-stats HTTP/1.1\r\nHost: inkq.test\r\n\r\n"


@pytest.fixture(scope="module")
def api(redis_url, tmp_path_factory):
    server = GunicornApi({"REDIS_URL": redis_url, "API_KEYS": "tok-f:framer", "SECRET_KEY": "k" * 32,
                          "WEB_CONCURRENCY": 1, "GEMINI_API_KEY": "", "LOG_FORMAT": "text"},
                         str(tmp_path_factory.mktemp("framing") / "api.log"))
    yield server
    server.stop()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[list[tuple[int, dict, bytes]], bool]:
    """Send `data` on one connection; every response read until the server closes it or `timeout` passes,
    and whether it closed."""
    responses, buffer, closed = [], b"", False
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                closed = True
                break
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, rest = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                if len(rest) < length:
                    break
                responses.append((int(lines[0].split()[1]), headers, rest[:length]))
                buffer = rest[length:]
    return responses, closed


def request(*fields: str, body: bytes = b"", line: str = "GET /healthz HTTP/1.1") -> bytes:
    return (line + "\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode("latin-1") + body


CHUNKED_THEN_SMUGGLED = b"0\r\n\r\n" + SMUGGLED

HOSTILE = {
    # the finding: a proxy framing by Content-Length sends all of it as one request's body
    "Content-Length and chunked": request("Host: inkq.test", f"Content-Length: {len(CHUNKED_THEN_SMUGGLED)}",
                                          "Transfer-Encoding: chunked", body=CHUNKED_THEN_SMUGGLED),
    "chunked then Content-Length": request("Host: inkq.test", "Transfer-Encoding: chunked",
                                           f"Content-Length: {len(CHUNKED_THEN_SMUGGLED)}",
                                           body=CHUNKED_THEN_SMUGGLED),
    # Transfer-Encoding other than one chunked: gevent framed these by Content-Length or as bodiless
    "gzip, chunked": request("Host: inkq.test", "Transfer-Encoding: gzip, chunked", body=CHUNKED_THEN_SMUGGLED),
    "chunked, chunked": request("Host: inkq.test", "Transfer-Encoding: chunked, chunked",
                                body=CHUNKED_THEN_SMUGGLED),
    "chunked twice": request("Host: inkq.test", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked",
                             body=CHUNKED_THEN_SMUGGLED),
    "identity": request("Host: inkq.test", "Transfer-Encoding: identity", body=CHUNKED_THEN_SMUGGLED),
    "xchunked": request("Host: inkq.test", "Transfer-Encoding: xchunked", body=CHUNKED_THEN_SMUGGLED),
    "chunked on HTTP/1.0": request("Host: inkq.test", "Transfer-Encoding: chunked", "Connection: keep-alive",
                                   body=CHUNKED_THEN_SMUGGLED, line="GET /healthz HTTP/1.0"),
    # header lines another parser reads otherwise: gevent took them as the end of the headers, or kept
    # the folded value, and read no body
    "space before the colon": request("Host: inkq.test", "Transfer-Encoding : chunked",
                                      body=CHUNKED_THEN_SMUGGLED),
    "folded value": request("Host: inkq.test", "Transfer-Encoding:", " chunked", body=CHUNKED_THEN_SMUGGLED),
    "bare LF": b"GET /healthz HTTP/1.1\r\nHost: inkq.test\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_THEN_SMUGGLED,
    "bare CR": b"GET /healthz HTTP/1.1\r\nHost: inkq.test\rTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_THEN_SMUGGLED,
    "control character": request("Host: inkq.test", "Transfer-Encoding: \x0bchunked", body=CHUNKED_THEN_SMUGGLED),
    # Content-Length that is not one plain number
    "two lengths that differ": request("Host: inkq.test", "Content-Length: 0", f"Content-Length: {len(SMUGGLED)}",
                                       body=SMUGGLED),
    "two equal lengths": request("Host: inkq.test", "Content-Length: 0", "Content-Length: 0", body=SMUGGLED),
    "a list of lengths": request("Host: inkq.test", "Content-Length: 0, 0", body=SMUGGLED),
    "a signed length": request("Host: inkq.test", "Content-Length: +0", body=SMUGGLED),
    "a length with an underscore": request("Host: inkq.test", "Content-Length: 0_0", body=SMUGGLED),
    # Host: which site the request is for must not be ambiguous (§3.2)
    "two Hosts": request("Host: inkq.test", "Host: evil.example", body=SMUGGLED),
    "no Host on HTTP/1.1": request("Content-Length: 0", body=SMUGGLED),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_request_whose_end_is_ambiguous_is_refused_and_its_connection_closed(api, name):
    responses, closed = exchange(api.port, HOSTILE[name])
    assert [status for status, _, _ in responses] == [400], (name, responses)
    status, headers, body = responses[0]
    assert headers["connection"].lower() == "close" and headers["content-type"] == "application/json"
    assert headers.get("x-request-id")
    error = json.loads(body)
    assert error["code"] == "invalid_request" and error["error"], error
    assert closed, f"{name}: the connection stayed open"


def test_chunked_bodies_and_kept_alive_connections_still_work(api):
    """The checks refuse only what is ambiguous: a chunked body (its coding with spaces around it, in any
    case) is read, and the next request on the connection is served."""
    body = b'{"operation": "no-such-operation"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    first = request("Host: inkq.test", "Authorization: Bearer tok-f", "Content-Type: application/json",
                    "Transfer-Encoding:  Chunked ", body=chunked, line="POST /generate HTTP/1.1")
    second = request("Host: inkq.test", "Content-Length: 0", "Connection: close")
    responses, closed = exchange(api.port, first + second)
    assert [status for status, _, _ in responses] == [400, 200], responses
    assert "operation" in json.loads(responses[0][2])["error"]  # the app read the body and answered it
    assert closed
    responses, _ = exchange(api.port, request("Host: inkq.test", "Content-Length: 0") * 2, timeout=1)
    assert [status for status, _, _ in responses] == [200, 200], responses
