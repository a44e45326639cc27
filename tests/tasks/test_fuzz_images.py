"""Malformed images through the API and the real worker pools.

Real JPEG, PNG and WebP files are mutated with a fixed seed (bit flips, truncation, chunk and segment
corruption with or without a fixed CRC, header dimensions, zero-length and oversized chunks, dropped or
repeated chunks, appended junk) and submitted to POST /generate as stencil, color-match or enhance jobs.
The API may refuse one (400/415/413, never a 500); every accepted job must end `completed` or `failed`
with a readable reason (an engine raising anything but a FinalError fails the test too), no job may be
left waiting or active, and the workers must still be alive and working afterwards.
"""
from __future__ import annotations

import io
import random
import struct
import uuid
import zlib
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from skimage import data as samples

from tasks.core.errors import CRASH_FAILURE, GENERIC_FAILURE, TIMEOUT_FAILURE
from tests.conftest import drawing
from tests.servers import wait_until

SEED = 1337
MUTANTS = 520
# Where the mutants go: the test pools run 2 stencil, 1 color-match and 1 enhance process. A stencil of a
# decodable image takes seconds on a busy machine, the other two a fraction of one.
OPERATIONS = {"stencil": 1.0, "color-match": 3.5, "enhance": 3.5}
ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED}
REFUSED = {400: "invalid_request", 413: "payload_too_large", 415: "unsupported_media_type"}


# --- seeds ---------------------------------------------------------------------------------------

def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def seed_images() -> dict[str, bytes]:
    """Small real pictures in the accepted formats and their common variants."""
    astronaut = Image.fromarray(samples.astronaut()).resize((96, 96))
    coffee = Image.fromarray(samples.coffee()).resize((112, 80))
    rgba = astronaut.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((96, 96)))
    deep = Image.fromarray((np.asarray(coffee.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    return {
        "jpeg": _encoded(astronaut, "JPEG", quality=85),
        "jpeg-progressive": _encoded(coffee, "JPEG", quality=80, progressive=True),
        "jpeg-gray": _encoded(astronaut.convert("L"), "JPEG"),
        "png-rgb": _encoded(astronaut, "PNG"),
        "png-rgba": _encoded(rgba, "PNG"),
        "png-palette": _encoded(coffee.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG"),
        "png-16bit": _encoded(deep, "PNG"),
        "webp-lossy": _encoded(astronaut, "WEBP", quality=70),
        "webp-lossless": _encoded(coffee, "WEBP", lossless=True),
        "webp-alpha": _encoded(rgba, "WEBP", quality=70),
    }


# --- container structure -------------------------------------------------------------------------

def png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each PNG chunk, as far as the file can be walked."""
    out, at = [], 8
    while at + 8 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        out.append((at, length))
        at += 12 + length
    return out


def png_fix_crc(data: bytearray, at: int) -> None:
    length = struct.unpack(">I", data[at:at + 4])[0]
    end = at + 8 + length
    if end + 4 <= len(data):
        data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[at + 4:end])))


def jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset, declared length) of each JPEG marker segment before the scan data."""
    out, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        out.append((at, length))
        if data[at + 1] == 0xDA:
            break
        at += 2 + length
    return out


def riff_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each chunk of a RIFF/WebP file."""
    out, at = [], 12
    while at + 8 <= len(data):
        length = struct.unpack("<I", data[at + 4:at + 8])[0]
        out.append((at, length))
        at += 8 + length + (length & 1)
    return out


def kind_of(data: bytes) -> str:
    return "png" if data[:4] == b"\x89PNG" else "webp" if data[:4] == b"RIFF" else "jpeg"


# --- mutators ------------------------------------------------------------------------------------

def bit_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    start = rng.choice([0, 16, len(out) // 4])
    for _ in range(rng.choice([1, 2, 4, 8, 32])):
        i = rng.randrange(start, len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncation(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.choice([rng.randrange(1, 64), rng.randrange(1, len(data)), len(data) - rng.randrange(1, 16)])]


def appended_junk(rng: random.Random, data: bytes) -> bytes:
    junk = rng.choice([rng.randbytes(rng.randrange(1, 4096)), data, b"\x00" * 100_000, b"<?php echo 1; ?>"])
    return data + junk


def overwritten_run(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    at = rng.randrange(len(out))
    size = min(len(out) - at, rng.choice([1, 4, 16, 64, 512]))
    out[at:at + size] = rng.choice([rng.randbytes(size), b"\x00" * size, b"\xff" * size])
    return bytes(out)


def _dimension(rng: random.Random, current: int, bits: int) -> int:
    choices = [0, 1, 2, 15, 16, 17, current - 1, current + 1, current * 2, current * 64, 5000, 65535,
               (1 << bits) - 1, rng.randrange(1 << bits)]
    return max(0, min((1 << bits) - 1, rng.choice(choices)))


def header_dimensions(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    kind = kind_of(data)
    if kind == "png":
        width, height = struct.unpack(">II", out[16:24])
        struct.pack_into(">II", out, 16, *(_dimension(rng, v, 31) if rng.random() < 0.7 else v
                                           for v in (width, height)))
        if rng.random() < 0.8:
            png_fix_crc(out, 8)
    elif kind == "jpeg":
        for at, _ in jpeg_segments(data):
            if out[at + 1] in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", out[at + 5:at + 9])
                struct.pack_into(">HH", out, at + 5, _dimension(rng, height, 16), _dimension(rng, width, 16))
    else:
        for at, length in riff_chunks(data):
            tag = bytes(out[at:at + 4])
            if tag == b"VP8 " and length >= 10:
                struct.pack_into("<HH", out, at + 8 + 6, _dimension(rng, 96, 14), _dimension(rng, 96, 14))
            elif tag == b"VP8L" and length >= 5:
                bits = _dimension(rng, 95, 14) | (_dimension(rng, 95, 14) << 14) | (out[at + 12] & 0xF0) << 24
                struct.pack_into("<I", out, at + 9, bits & 0xFFFFFFFF)
            elif tag == b"VP8X":
                out[at + 12:at + 15] = _dimension(rng, 95, 24).to_bytes(3, "little")
                out[at + 15:at + 18] = _dimension(rng, 95, 24).to_bytes(3, "little")
    return bytes(out)


def chunk_corruption(rng: random.Random, data: bytes) -> bytes:
    """Random bytes inside one chunk or segment; PNG CRCs are usually fixed so the decoder reads on."""
    out = bytearray(data)
    kind = kind_of(data)
    spans = (png_chunks(data) if kind == "png" else jpeg_segments(data) if kind == "jpeg" else riff_chunks(data))
    if not spans:
        return overwritten_run(rng, data)
    at, length = rng.choice(spans)
    body = at + (8 if kind != "jpeg" else 4)
    size = max(1, min(length, len(out) - body))
    for _ in range(rng.choice([1, 3, 10])):
        i = body + rng.randrange(size)
        if i < len(out):
            out[i] = rng.randrange(256)
    if kind == "png" and rng.random() < 0.8:
        png_fix_crc(out, at)
    return bytes(out)


def length_fields(rng: random.Random, data: bytes) -> bytes:
    """A chunk or segment length set to zero, a tiny value or a huge one; or a zero-length chunk inserted."""
    out = bytearray(data)
    kind = kind_of(data)
    if kind == "png":
        chunks = png_chunks(data)
        if rng.random() < 0.5:
            kind_name = rng.choice([b"IDAT", b"IHDR", b"PLTE", b"tRNS", b"zTXt", b"iCCP", b"IEND", b"acTL"])
            at = rng.choice(chunks)[0]
            empty = struct.pack(">I", 0) + kind_name + struct.pack(">I", zlib.crc32(kind_name))
            return bytes(out[:at] + empty + out[at:])
        at, _ = rng.choice(chunks)
        struct.pack_into(">I", out, at, rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(data)]))
    elif kind == "jpeg":
        at, _ = rng.choice(jpeg_segments(data))
        struct.pack_into(">H", out, at + 2, rng.choice([0, 1, 2, 3, 0xFFFF]))
    else:
        spans = riff_chunks(data)
        if rng.random() < 0.3 or not spans:
            struct.pack_into("<I", out, 4, rng.choice([0, 4, 0xFFFFFFFF, len(data) * 4]))
        else:
            at, _ = rng.choice(spans)
            struct.pack_into("<I", out, at + 4, rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF]))
    return bytes(out)


def chunk_order(rng: random.Random, data: bytes) -> bytes:
    """A chunk or segment dropped, repeated or moved."""
    kind = kind_of(data)
    if kind == "png":
        spans = [(at, 12 + length) for at, length in png_chunks(data)]
        head = 8
    elif kind == "jpeg":
        spans = [(at, 2 + length) for at, length in jpeg_segments(data)]
        head = 2
    else:
        spans = [(at, 8 + length + (length & 1)) for at, length in riff_chunks(data)]
        head = 12
    if not spans:
        return truncation(rng, data)
    at, size = rng.choice(spans)
    piece = data[at:at + size]
    action = rng.choice(["drop", "repeat", "front"])
    if action == "drop":
        return data[:at] + data[at + size:]
    if action == "repeat":
        return data[:at + size] + piece * rng.choice([1, 2, 50]) + data[at + size:]
    rest = data[:at] + data[at + size:]
    return rest[:head] + piece + rest[head:]


def entropy_damage(rng: random.Random, data: bytes) -> bytes:
    """Bytes changed in the compressed image data only (after the headers), so the header check passes."""
    out = bytearray(data)
    start = max(len(out) // 3, min(len(out) - 1, 200))
    for _ in range(rng.choice([1, 5, 50])):
        out[rng.randrange(start, len(out))] = rng.randrange(256)
    return bytes(out)


MUTATORS = [bit_flips, truncation, appended_junk, overwritten_run, header_dimensions, chunk_corruption,
            length_fields, chunk_order, entropy_damage]


def mutants(count: int, seed: int = SEED):
    """`count` (seed name, mutator names, bytes), deterministic for a seed."""
    rng = random.Random(seed)
    seeds = seed_images()
    names = sorted(seeds)
    for i in range(count):
        name = names[i % len(names)]
        data = seeds[name]
        steps = [MUTATORS[(i // len(names)) % len(MUTATORS)]]
        if rng.random() < 0.25:
            steps.append(rng.choice(MUTATORS))
        for step in steps:
            try:
                data = step(rng, data)
            except (IndexError, ValueError, struct.error):  # a second step on a file the first one broke
                data = bit_flips(rng, data)
        yield name, "+".join(step.__name__ for step in steps), data


# --- the test ------------------------------------------------------------------------------------

def _readable(error) -> bool:
    return (isinstance(error, str) and 0 < len(error.strip()) < 500 and "Traceback" not in error
            and 'File "' not in error)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the API's header check, in-process
def test_malformed_images_through_the_real_workers(make_api, workers, redis):
    api = make_api(API_KEYS=f"tok-alice:fuzz-{uuid.uuid4().hex[:8]},tok-bob:bob", MAX_INFLIGHT_PER_USER=100000,
                   RATE_LIMIT="100000/minute")
    rng = random.Random(SEED)
    refused, server_errors, accepted = Counter(), [], {}
    for i, (name, how, data) in enumerate(mutants(MUTANTS)):
        operation = rng.choices(list(OPERATIONS), weights=list(OPERATIONS.values()))[0]
        fields = {"operation": operation}
        if operation == "color-match":
            fields["colors"] = rng.randint(2, 12)
        elif operation == "stencil" and rng.random() < 0.3:
            fields["style"] = rng.choice(["fine", "bold", "topographic"])
        response = api.submit(data, **fields)
        if response.status_code == 202:
            accepted[response.json()["jobId"]] = (name, how, operation)
        elif response.status_code in REFUSED:
            body = response.json()
            assert body["code"] == REFUSED[response.status_code] and set(body) == {"error", "code"}, body
            assert _readable(body["error"]), body
            refused[response.status_code] += 1
        else:
            server_errors.append((name, how, response.status_code, response.text[:200]))
    assert not server_errors, server_errors

    pending = set(accepted)

    def all_ended():  # polled in Redis, which is cheap; the API is asked once every job has ended
        jobs = Job.fetch_many(sorted(pending), connection=redis, serializer=JSONSerializer)
        pending.difference_update(job.id for job in jobs if job and job.get_status(refresh=False) in ENDED)
        return not pending

    try:
        wait_until(all_ended, timeout=150, interval=0.25, what="every fuzzed job to end")
    except AssertionError:
        stuck = {j: api.get(f"/status/{j}").json()["status"] for j in sorted(pending)}
        raise AssertionError(f"{len(stuck)} of {len(accepted)} jobs never ended: {list(stuck.items())[:20]}")
    ended = {job_id: api.get(f"/status/{job_id}").json() for job_id in accepted}

    outcomes = Counter(status["status"] for status in ended.values())
    assert set(outcomes) <= {"completed", "failed"}, outcomes
    failures = {j: s for j, s in ended.items() if s["status"] == "failed"}
    unreadable = {j: s["error"] for j, s in failures.items() if not _readable(s["error"])}
    assert not unreadable, unreadable
    crashed = {j: accepted[j] for j, s in failures.items() if s["error"] in (CRASH_FAILURE, TIMEOUT_FAILURE)}
    unexpected = {}
    for job_id, status in failures.items():
        if status["error"] == GENERIC_FAILURE:
            result = Job.fetch(job_id, connection=redis, serializer=JSONSerializer).latest_result()
            last_line = (result.exc_string or "").strip().splitlines()[-1:] if result else []
            unexpected[job_id] = (*accepted[job_id], last_line)
    completed = [accepted[j] for j, s in ended.items() if s["status"] == "completed"]
    assert all(s["result"]["image"] and s["error"] is None for s in ended.values() if s["status"] == "completed")
    reasons = Counter(s["error"] for s in failures.values())
    print(f"\nfuzzed {MUTANTS} images: refused by the API {sum(refused.values())} {dict(refused)}, "
          f"accepted {len(accepted)}: failed cleanly {len(failures) - len(unexpected) - len(crashed)}, "
          f"failed unexpectedly {len(unexpected)}, crashed or timed out {len(crashed)}, completed {len(completed)}")
    print("accepted by operation:", Counter(op for _, _, op in accepted.values()),
          "completed by operation:", Counter(op for _, _, op in completed))
    print("completed by seed and mutation:", Counter((name, how) for name, how, _ in completed).most_common(12))
    print("failure reasons:", reasons.most_common(10))
    for job_id, detail in list(unexpected.items())[:10]:
        print("unexpected failure:", job_id, detail)
    assert not crashed, f"work-horses died or timed out on: {crashed}"
    assert not unexpected, f"engines raised something other than a FinalError: {unexpected}"
    assert all(s["attempts"] == 1 for s in failures.values()), "a malformed image should not be retried"

    assert workers.proc.poll() is None, "the worker service exited"
    for operation in ("stencil", "color-match"):
        job_id = api.submit(drawing((128, 128)), operation=operation).json()["jobId"]
        assert api.wait(job_id, timeout=60)["status"] == "completed", operation
