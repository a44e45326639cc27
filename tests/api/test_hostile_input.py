"""Hostile input over real HTTP: oversized bodies, decompression bombs, refused formats and body types,
wrong field types, odd paths and ids. Nothing may reach a 500, and every error is contract JSON.

Accepted submissions belong to a throwaway user (the `tok-alice` token mapped to a fresh id) and are
canceled afterwards, so nothing piles up for the other tests sharing the session's Redis.
"""
from __future__ import annotations

import base64
import io
import json
import resource
import socket
import struct
import time
import uuid
import zlib
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.conftest import Api, base_config, drawing
from tests.servers import ApiServer

CODES = {400: {"invalid_request"}, 401: {"unauthenticated"}, 403: {"forbidden", "insufficient_credits"},
         404: {"not_found"}, 405: {"method_not_allowed"}, 409: {"conflict"}, 413: {"payload_too_large"},
         415: {"unsupported_media_type"}, 429: {"rate_limited", "too_many_jobs"},
         503: {"unavailable", "queue_full", "provider_unavailable"}}
ADMIN = "admin-secret-token"
MB = 1024 * 1024


def assert_error(response, status: int, code: str | None = None) -> dict:
    """`response` is contract error JSON with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    return assert_contract_error(response.status_code, response.headers.get("Content-Type", ""), response.content,
                                 code)


def assert_contract_error(status: int, content_type: str, body: bytes, code: str | None = None) -> dict:
    """An error body is `{"error", "code"}` JSON with a code the contract names for its status."""
    assert content_type.split(";")[0].strip() == "application/json", (status, content_type, body[:200])
    data = json.loads(body)
    assert set(data) == {"error", "code"}, data
    assert isinstance(data["error"], str) and data["error"].strip(), data
    assert data["code"] in CODES.get(status, ()), (status, data)
    assert code is None or data["code"] == code, (code, data)
    assert "Traceback" not in data["error"] and 'File "' not in data["error"], data
    return data


@pytest.fixture(scope="module")
def hostile(redis_url):
    """One API for the module whose `tok-alice` is a fresh user, with a 1 MB upload limit.

    Accepted jobs are canceled at the end.
    """
    from api import create_app

    server = ApiServer(create_app(base_config(
        redis_url, MAX_UPLOAD_MB=1, API_KEYS=f"tok-alice:hostile-{uuid.uuid4().hex[:8]},tok-bob:bob",
        MAX_INFLIGHT_PER_USER=1000)))
    api = Api(server.url)
    yield api
    for job in api.get("/jobs?limit=100&status=waiting").json()["jobs"]:
        api.delete(f"/jobs/{job['jobId']}")
    server.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_bytes(fmt: str, size=(64, 64), mode="RGB", **save) -> bytes:
    img = Image.new(mode, size, (200, 40, 40) if mode == "RGB" else 128)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


# --- raw HTTP -------------------------------------------------------------------------------------

def raw_exchange(url: str, head: bytes, body_parts=(), timeout: float = 10.0) -> tuple[int, dict, bytes, float]:
    """Send `head` and some body parts on a socket and read one response; returns status, headers, body, seconds.

    Stops sending as soon as the server answers, and stops reading at the end of the announced body, so it
    does not wait for a server that keeps draining the rest of an over-long upload.
    """
    parts = urlsplit(url)
    started = time.monotonic()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        buffer = b""
        for part in body_parts:
            try:
                buffer += sock.recv(65536)
            except BlockingIOError:
                pass
            if buffer:
                break
            try:
                sock.sendall(part)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {buffer!r}"
            buffer += chunk
        head_bytes, body = buffer.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        elapsed = time.monotonic() - started
    return int(lines[0].split()[1]), headers, body, elapsed


def raw_request(url: str, method: str, target: str, token: str | None = None) -> tuple[int, dict, bytes]:
    """One request with the exact request target (no client-side normalisation of `..` or escapes)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = f"{method} {target} HTTP/1.1\r\nHost: inkq.test\r\n{auth}Connection: close\r\n\r\n".encode("latin-1")
    status, headers, body, _ = raw_exchange(url, head)
    return status, headers, body


# --- body size -------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=xyz"])
def test_content_length_far_over_the_limit_is_413_before_the_body_is_read(hostile, content_type):
    head = (f"POST /generate HTTP/1.1\r\nHost: inkq.test\r\nAuthorization: Bearer tok-alice\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {500 * MB}\r\n\r\n").encode()
    status, headers, body, elapsed = raw_exchange(hostile.url, head, [b"A" * 65536] * 8)
    assert status == 413
    assert assert_contract_error(status, headers["content-type"], body)["code"] == "payload_too_large"
    assert elapsed < 3, f"413 took {elapsed:.1f}s for a body that was never sent"


def _chunks(prefix: bytes, total: int, suffix: bytes):
    yield prefix
    sent = 0
    while sent < total:
        yield b"A" * 65536
        sent += 65536
    yield suffix


def test_chunked_json_over_the_limit_is_413(hostile):
    response = hostile.post("/generate", data=_chunks(b'{"image": "', 3 * MB, b'"}'),
                            headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")


def test_chunked_multipart_over_the_limit_is_413(hostile):
    head = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    response = hostile.post("/generate", data=_chunks(head, 3 * MB, b"\r\n--xyz--\r\n"),
                            headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert_error(response, 413, "payload_too_large")


def test_chunked_body_under_the_limit_is_accepted(hostile):
    body = json.dumps({"image": b64(drawing((64, 64)))}).encode()
    response = hostile.post("/generate", data=iter([body[:100], body[100:]]),
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text


def _padded_png(size: int) -> bytes:
    """A valid PNG followed by junk up to `size` bytes (the header check does not look past IEND)."""
    png = drawing((64, 64))
    return png + b"\x00" * (size - len(png))


def test_image_of_the_limit_fits_as_base64_and_one_above_it_is_413(hostile):
    assert hostile.submit(_padded_png(MB - 1024)).status_code == 202
    assert_error(hostile.submit(_padded_png(MB + 16 * 1024)), 413, "payload_too_large")
    upload = hostile.post("/generate", files={"image": ("big.png", _padded_png(MB + 16 * 1024), "image/png")})
    assert_error(upload, 413, "payload_too_large")
    assert_error(hostile.submit(_padded_png(int(1.2 * MB))), 413, "payload_too_large")


def test_too_many_multipart_parts_or_an_oversized_text_part_is_refused(hostile):
    many = hostile.post("/generate", files=[(f"f{i}", (None, "x")) for i in range(1200)])
    assert many.status_code in (400, 413), many.text
    assert_error(many, many.status_code)
    big = hostile.post("/generate", files={"prompt": (None, "p" * 700_000), "image": ("a.png", drawing((64, 64)))})
    assert big.status_code in (400, 413), big.text
    assert_error(big, big.status_code)


# --- decompression bombs ---------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height with one short IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def png_of_zeros(width: int, height: int) -> bytes:
    """A complete 1-bit PNG of width x height black pixels: every row compressed, a tiny file."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF segment is edited to claim width x height."""
    data = image_bytes("JPEG")
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def webp_vp8_claiming(width: int, height: int) -> bytes:
    """A small lossy WebP whose VP8 frame header claims width x height (14 bits each)."""
    data = bytearray(image_bytes("WEBP"))
    at = data.find(b"\x9d\x01\x2a") + 3
    struct.pack_into("<HH", data, at, width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


def webp_vp8x_claiming(width: int, height: int) -> bytes:
    """An extended WebP whose VP8X canvas claims width x height (24 bits each)."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + image_bytes("WEBP")[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


BOMBS = {
    "png 30000x30000, header and a short IDAT": lambda: png_header_only(30000, 30000),
    "png 20000x20000 of compressed zeros": lambda: png_of_zeros(20000, 20000),
    "png 8000x8000 of compressed zeros (under Pillow's own limit)": lambda: png_of_zeros(8000, 8000),
    "png 2^31-1 square": lambda: png_header_only(2**31 - 1, 2**31 - 1),
    "jpeg 65500x65500": lambda: jpeg_claiming(65500, 65500),
    "jpeg 10000x5000": lambda: jpeg_claiming(10000, 5000),
    "webp vp8 16383x16383": lambda: webp_vp8_claiming(16383, 16383),
    "webp vp8 7000x7000": lambda: webp_vp8_claiming(7000, 7000),
    "webp vp8x 16384x16384": lambda: webp_vp8x_claiming(16384, 16384),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_are_refused_quickly_without_decoding(hostile, name):
    data = BOMBS[name]()
    assert len(data) < 200_000, len(data)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    response = hostile.submit(data)
    elapsed = time.monotonic() - started
    assert_error(response, 400, "invalid_request")
    assert elapsed < 1.0, f"{name}: {elapsed:.2f}s"
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # the server runs in this process
    assert grown_kb < 100_000, f"{name}: peak memory grew by {grown_kb} kB"


def test_max_pixels_setting_is_enforced(make_api):
    api = make_api(MAX_PIXELS=10_000)
    response = api.submit(drawing((200, 200)))
    assert "pixels" in assert_error(response, 400, "invalid_request")["error"]


# --- formats and body types ------------------------------------------------------------------------

REFUSED_FORMATS = {
    "gif": lambda: image_bytes("GIF"),
    "bmp": lambda: image_bytes("BMP"),
    "tiff": lambda: image_bytes("TIFF"),
    "tiff big-endian": lambda: b"MM\x00*" + b"\x00" * 60,
    "ico": lambda: image_bytes("ICO", size=(32, 32)),
    "psd": lambda: b"8BPS\x00\x01" + b"\x00" * 60,
    "jpeg 2000": lambda: image_bytes("JPEG2000"),
    "heic": lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    "avif": lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64,
}


@pytest.mark.parametrize("name", list(REFUSED_FORMATS))
def test_image_formats_other_than_jpeg_png_webp_are_415(hostile, name):
    data = REFUSED_FORMATS[name]()
    assert_error(hostile.submit(data), 415, "unsupported_media_type")
    upload = hostile.post("/generate", files={"image": ("picture", data, "application/octet-stream")})
    assert_error(upload, 415, "unsupported_media_type")


@pytest.mark.parametrize("data", [b"%PDF-1.7\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"\x00" * 64,
                                  b"RIFF\x00\x00\x00\x00AVI LIST", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff",
                                  b"RIFF\x10\x00\x00\x00WEBP"])
def test_bytes_that_are_no_readable_image_are_400(hostile, data):
    assert_error(hostile.submit(data), 400, "invalid_request")


@pytest.mark.parametrize("content_type,body,status", [
    ("application/x-www-form-urlencoded", b"image=abc&operation=stencil", 415),
    ("application/xml", b"<generate><image>abc</image></generate>", 415),
    ("image/png", drawing((64, 64)), 415),
    ("application/octet-stream", b"\x00\x01\x02", 415),
    ("text/plain", b"make me a stencil", 400),
    (None, b"make me a stencil", 400),
    ("application/json", b'{"image": "abc"', 400),
    ("application/json", b"", 400),
    ("application/json", b"\xff\xfe\xfa", 400),
    ("application/json", b'["image"]', 400),
    ("application/json", b'"image"', 400),
    ("application/json", b"null", 400),
    ("application/json", b"[" * 100_000 + b"]" * 100_000, 400),
    ("application/json", b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ("application/json", b'{"colors": ' + b"9" * 5000 + b"}", 400),
    ("multipart/form-data", b"--x\r\n", 400),
    ("multipart/form-data; boundary=xyz", b"garbage", 400),
])
def test_body_types_and_malformed_bodies(hostile, content_type, body, status):
    headers = {"Content-Type": content_type} if content_type else {}
    response = hostile.post("/generate", data=body, headers=headers)
    expected = "unsupported_media_type" if status == 415 else "invalid_request"
    assert_error(response, status, expected)


def test_json_body_under_text_plain_or_no_content_type_is_read_as_json(hostile):
    body = json.dumps({"image": b64(drawing((64, 64)))}).encode()
    for headers in ({"Content-Type": "text/plain;charset=UTF-8"}, {"Content-Type": "application/vnd.api+json"}, {}):
        response = hostile.post("/generate", data=body, headers=headers)
        assert response.status_code == 202, (headers, response.text)


# --- fields --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"operation": 5}, {"operation": None}, {"operation": "STENCIL"}, {"operation": ["stencil"]},
    {"style": []}, {"style": "neon"}, {"prompt": {}}, {"prompt": 42}, {"engine": "gpt"}, {"engine": 1},
    {"lineWeight": "heavy"}, {"lineWeight": 0}, {"lineWeight": 3.5}, {"lineWeight": [1]},
    {"transparent": "maybe"}, {"transparent": [True]}, {"transparent": {}},
    {"colors": 100}, {"colors": 1}, {"colors": 2.5}, {"colors": "six"}, {"colors": True},
    {"webhookUrl": 7}, {"webhookUrl": "http://hooks.test/" + "a" * 5000}, {"webhookUrl": ["http://hooks.test/"]},
    {"prompt": "p" * 10_000},
    {"foo": 1}, {"Image": "x"}, {"__proto__": {}}, {"image": 5}, {"image": ["AAAA"]}, {"image": {"data": "AAAA"}},
])
def test_wrong_types_overlong_and_unknown_fields_are_400(hostile, fields):
    body = {"image": b64(drawing((64, 64))), **fields}
    assert_error(hostile.post("/generate", json=body), 400, "invalid_request")


@pytest.mark.parametrize("image", ["", "   ", "!!!!", "A", "data:,abc", "data:image/png;base64,",
                                   "data:image/png;base64,%%%", "\u00e9\u00e9\u00e9\u00e9", "AAAA" * 3, "\ud800"])
def test_bad_image_strings_are_400(hostile, image):
    body = json.dumps({"image": image}).encode()
    assert_error(hostile.post("/generate", data=body, headers={"Content-Type": "application/json"}), 400,
                 "invalid_request")


@pytest.mark.parametrize("key", ["k" * 1000, "k" * 256, "", "tab\tkey", "bell\x07", "nul\x00"])
def test_bad_idempotency_keys_are_400(hostile, key):
    body = json.dumps({"image": b64(drawing((64, 64)))}).encode()
    head = (f"POST /generate HTTP/1.1\r\nHost: inkq.test\r\nAuthorization: Bearer tok-alice\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1")
    status, headers, answer, _ = raw_exchange(hostile.url, head + body)
    assert status == 400, (status, answer[:200])
    assert assert_contract_error(status, headers["content-type"], answer)["code"] == "invalid_request"


def test_non_finite_numbers_are_400(hostile):
    image = b64(drawing((64, 64)))
    for raw in (b"Infinity", b"-Infinity", b"NaN", b"1e400"):
        body = b'{"image": "' + image.encode() + b'", "lineWeight": ' + raw + b"}"
        response = hostile.post("/generate", data=body, headers={"Content-Type": "application/json"})
        assert_error(response, 400, "invalid_request")


def test_ia_gen_prompt_limits(hostile):
    assert_error(hostile.post("/generate", json={"operation": "ia-gen", "prompt": "x" * 10_000}), 400,
                 "invalid_request")
    assert_error(hostile.post("/generate", json={"operation": "ia-gen"}), 400, "invalid_request")


MULTIPART_CASES = {
    "unknown text part": dict(files={"image": ("a.png", drawing((64, 64)))}, data={"foo": "1"}),
    "unknown file part": dict(files={"image": ("a.png", drawing((64, 64))), "other": ("b.png", b"x")}),
    "duplicate field": dict(files={"image": ("a.png", drawing((64, 64)))}, data=[("style", "fine"), ("style", "bold")]),
    "duplicate image file": dict(files=[("image", ("a.png", drawing((64, 64)))),
                                        ("image", ("b.png", drawing((64, 64))))]),
    "image as a text field": dict(files={"style": (None, "bold")}, data={"image": b64(drawing((64, 64)))}),
    "image both as text and file": dict(files={"image": ("a.png", drawing((64, 64)))},
                                        data={"image": b64(drawing((64, 64)))}),
    "empty image file": dict(files={"image": ("a.png", b"")}),
    "no image": dict(files={"style": (None, "bold")}),
    "transparent=maybe": dict(files={"image": ("a.png", drawing((64, 64)))}, data={"transparent": "maybe"}),
    "colors=abc": dict(files={"image": ("a.png", drawing((64, 64)))}, data={"colors": "abc"}),
    "lineWeight=heavy": dict(files={"image": ("a.png", drawing((64, 64)))}, data={"lineWeight": "heavy"}),
    "operation=paint": dict(files={"image": ("a.png", drawing((64, 64)))}, data={"operation": "paint"}),
    "prompt of 10k chars": dict(files={"image": ("a.png", drawing((64, 64)))}, data={"prompt": "p" * 10_000}),
    "text part that is not an image": dict(files={"image": ("a.png", b"just text")}),
}


@pytest.mark.parametrize("name", list(MULTIPART_CASES))
def test_malformed_multipart_is_400(hostile, name):
    assert_error(hostile.post("/generate", **MULTIPART_CASES[name]), 400, "invalid_request")


def test_multipart_form_values_still_work(hostile):
    response = hostile.post("/generate", files={"image": ("a.png", drawing((64, 64)), "image/png")},
                            data={"transparent": "on", "lineWeight": " 1.5 ", "colors": "", "style": "bold"})
    assert response.status_code == 202, response.text


# --- paths, ids and query strings ------------------------------------------------------------------

ODD_IDS = ["..%2F..%2Fetc%2Fpasswd", "../../etc/passwd", "%00", "%2e%2e", "a" * 10_000, "%C3%A9t%C3%A9",
           "%F0%9F%92%A9", "%ED%A0%80", "%FF%FE", "rq:job:x", "rq%3Ajob%3Ax", "*", "%2A", "0" * 31 + "g", "0" * 32,
           "F" * 32, "inkq:user:alice:jobs", "x%0D%0ASet-Cookie:%20a=b", "%20", "x;y", "{{7*7}}", "$(id)"]
JOB_ROUTES = [("GET", "/status/{}"), ("GET", "/status/{}/events"), ("GET", "/result/{}"), ("DELETE", "/jobs/{}"),
              ("GET", "/files/{}")]
HTML_OK = ("/", "/docs", "/docs/", "/admin/rq", "/admin/rq/")


def assert_no_server_error(method: str, target: str, status: int, headers: dict, body: bytes) -> None:
    where = f"{method} {target[:80]}"
    assert status < 500, (where, status, body[:300])
    if status >= 400:
        assert_contract_error(status, headers.get("content-type", ""), body)
    elif status >= 300:
        assert headers.get("location", "").startswith(("/", "http://inkq.test/")), (where, headers)


@pytest.mark.parametrize("odd", ODD_IDS)
@pytest.mark.parametrize("token", ["tok-alice", None])
def test_odd_job_ids_never_reach_a_500(hostile, odd, token):
    for method, route in JOB_ROUTES:
        target = route.format(odd)
        status, headers, body = raw_request(hostile.url, method, target, token)
        assert_no_server_error(method, target, status, headers, body)
        if status == 200:
            raise AssertionError(f"{method} {target[:80]} answered 200")


ADMIN_PATHS = ["/admin/rq/", "/admin/rq", "/admin/rq/../", "/admin/rq/%2e%2e/", "/admin/rq/%00",
               "/admin/rq/favicon.ico",
               "/admin/rq/static/../../../../etc/passwd", "/admin/rq/static/%2e%2e/web.py", "/admin/rq/0/view/job/%00",
               "/admin/rq/99/view", "/admin/rq/-1/view/queues", "/admin/rq/99/data/queues.json",
               "/admin/rq/0/data/job/%00.json", "/admin/rq/0/data/job/nosuch.json",
               "/admin/rq/0/data/job/rq:job:x.json",
               "/admin/rq/0/data/jobs/%00/failed/10/asc/1.json", "/admin/rq/0/data/jobs/q/bogus/10/asc/1.json",
               "/admin/rq/0/data/jobs/q/failed/x/asc/1.json", "/admin/rq/0/data/jobs/q/failed/0/asc/1.json",
               "/admin/rq/0/data/jobs/q/queued/-5/dsc/-1.json", "/admin/rq/0/view/jobs/q/bogus/0/asc/1",
               "/admin/rq/job/" + "a" * 5000 + "/delete", "/admin/rq/job/%00/requeue", "/admin/rq/requeue/nosuch%00",
               "/admin/rq/queue/nosuch%00/bogus/empty", "/admin/rq/queue/nosuch%00/compact",
               "/admin/queue-stats?x=%00", "/admin/credits/%00", "/admin/credits/" + "u" * 300,
               "/admin/../status/x", "/admin%2Frq%2F"]


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_odd_admin_paths_never_reach_a_500(hostile, path):
    for token in (ADMIN, "tok-alice", None):
        for method in ("GET", "POST", "DELETE"):
            status, headers, body = raw_request(hostile.url, method, path, token)
            assert_no_server_error(method, path, status, headers, body)
            if token != ADMIN and path.startswith("/admin/rq") and status not in (404, 405):
                assert status == (401 if token is None else 403), (method, path, token, status)


@pytest.mark.parametrize("path", ["/docs/../", "/docs/%2e%2e/openapi.json", "/docs/../../etc/passwd", "/docs/%00",
                                  "//status//x", "/status//x", "*", "/nope", "/openapi.json/..",
                                  "/static/../api/auth.py",
                                  "/%2e%2e/%2e%2e/etc/passwd", "/healthz/%00", "/metrics/../../"])
def test_odd_public_paths_never_reach_a_500(hostile, path):
    for method in ("GET", "POST", "DELETE"):
        status, headers, body = raw_request(hostile.url, method, path, "tok-alice")
        assert_no_server_error(method, path, status, headers, body)


@pytest.mark.parametrize("query", ["limit=1e9", "limit=-1", "limit=0", "limit=101", "limit=abc", "limit=", "limit=%00",
                                   "limit=99999999999999999999999999", "limit=1.5", "status=done", "status[]=x",
                                   "status=%00", "status=waiting&status=failed", "limit=1&limit=2", "foo=bar",
                                   "%ff=%fe", "limit=" + "9" * 5000])
def test_junk_query_strings_on_the_jobs_list(hostile, query):
    status, headers, body = raw_request(hostile.url, "GET", "/jobs?" + query, "tok-alice")
    assert_no_server_error("GET", query, status, headers, body)
    assert status in (200, 400), (query, status, body[:200])
    if status == 200:
        assert isinstance(json.loads(body)["jobs"], list)


@pytest.mark.parametrize("query", ["queue=%00", "queue=" + "q" * 5000, "queue[]=x", "x=%ff"])
def test_junk_query_strings_on_status(hostile, query):
    status, headers, body = raw_request(hostile.url, "GET", f"/status/{'0' * 32}?{query}", "tok-alice")
    assert status == 404 and assert_contract_error(status, headers["content-type"], body)["code"] == "not_found"


def test_admin_credits_with_hostile_bodies(hostile):
    for body in (b"", b"xx", b"[]", b'{"add": "one"}', b'{"add": 1.5}', b'{"add": 1e400}', b'{"add": 1, "set": 2}',
                 b'{"nope": 1}',
                 b'{"add": ' + b"9" * 5000 + b"}", b"\xff\xfe"):
        response = hostile.post("/admin/credits/someone", data=body, token=ADMIN,
                                headers={"Content-Type": "application/json"})
        assert_error(response, 400, "invalid_request")


def test_admin_credits_with_deeply_nested_json(hostile):
    response = hostile.post("/admin/credits/someone", data=b"[" * 100_000, token=ADMIN,
                            headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_every_error_is_contract_json(hostile):
    """A sweep over the ways a request can go wrong: each answer is `{"error", "code"}` JSON."""
    cases = [("GET", "/status/" + "0" * 32, "tok-alice"), ("GET", "/jobs", None), ("GET", "/jobs", "wrong"),
             ("GET", "/admin/queue-stats", "tok-alice"), ("GET", "/admin/queue-stats", None),
             ("PUT", "/generate", "tok-alice"), ("PATCH", "/jobs/" + "0" * 32, "tok-alice"),
             ("GET", "/generate", "tok-alice"), ("POST", "/status/x", "tok-alice"), ("GET", "/no/such/page", None),
             ("DELETE", "/jobs/" + "0" * 32, "tok-alice"), ("GET", "/result/" + "0" * 32, "tok-alice"),
             ("GET", "/files/not-a-token", None), ("POST", "/generate", "tok-alice")]
    for method, path, token in cases:
        response = hostile.call(method, path, token=token)
        assert response.status_code >= 400, (method, path)
        assert_error(response, response.status_code)
