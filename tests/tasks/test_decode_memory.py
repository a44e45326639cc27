"""Peak memory of decoding an upload and each engine's first step, per input pixel.

Each case runs in a fresh Python process, so its high-water RSS (`VmHWM`, not `ru_maxrss`, which on
Linux carries the forking pytest process's own peak across exec) is that decode's own peak: the process
imports everything and reads the file, notes its RSS, then decodes for stencil and colour match and
takes both engines' first steps (analysis grid, preview grid), then decodes again for enhance and
takes its first step. The peak above the noted RSS must stay within the bound `tasks/images.py`
states: `PEAK_BYTES_PER_PIXEL` (or the progressive-JPEG or WebP figure) per input pixel plus
`PEAK_CONSTANT`. The pictures are 9 MP (3000×3000): below 4000 px a side nothing is reduced
before the engines, the worst case per pixel; plus the attacker's 16-bit 6324×6324 (40 MP).
The old code failed four cases: 16-bit grey (11 B/px at 9 MP, 15 at 40 MP), RGBA and LA PNG (12).
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tasks import images

SIDE = 3000

PROBE = r"""
import gc, json, sys
from tasks import colormatch, enhance, images, stencil

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

data = open(sys.argv[1], "rb").read()
gc.collect()
start = status("VmRSS")
img = images.decode(data)
stencil._analysis_image(img)
colormatch._pixels(images.working_size(img, colormatch.PREVIEW_SIDE))
del img
enhance._capped(images.decode(data, working_pixels=enhance.INPUT_PIXELS))
print(json.dumps({"peak": status("VmHWM") - start}))
"""


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _png16(arr: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand: Pillow cannot write 16-bit RGB."""
    height, width = arr.shape[:2]
    rows = arr.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def _pattern(side: int) -> np.ndarray:
    """16-bit diagonal ramps: each row is the one above shifted by a pixel, so zlib packs it fast."""
    ramp = np.arange(side, dtype=np.uint16)
    return np.add.outer(ramp, ramp) * np.uint16(16)


def _cases(side: int) -> dict[str, bytes]:
    deep = _pattern(side)
    grey = Image.fromarray((deep >> 8).astype(np.uint8))
    rgb = Image.merge("RGB", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              grey.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    rgba = rgb.copy()
    rgba.putalpha(grey)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png-gray16": _png16(deep, 0),
        "png-rgb16": _png16(np.stack([deep, deep[::-1], deep[:, ::-1]], axis=-1), 2),
        "png-palette": _encoded(rgb.quantize(64, method=Image.Quantize.FASTOCTREE), "PNG", compress_level=1),
        "png-rgba": _encoded(rgba, "PNG", compress_level=1),
        "png-la": _encoded(Image.merge("LA", (grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT))), "PNG",
                           compress_level=1),
        "jpeg-cmyk": _encoded(rgb.convert("CMYK"), "JPEG", quality=80),
        "jpeg-cmyk-progressive": _encoded(rgb.convert("CMYK"), "JPEG", quality=80, progressive=True),
        "jpeg-exif-rotated": _encoded(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "webp-alpha": _encoded(rgba, "WEBP", quality=50, method=0),
    }


def _bound(name: str) -> int:
    if name.startswith("webp"):
        return images.PEAK_BYTES_WEBP
    return images.PEAK_BYTES_PROGRESSIVE_JPEG if "progressive" in name else images.PEAK_BYTES_PER_PIXEL


CASES = ("png-gray16", "png-gray16-40mp", "png-rgb16", "png-palette", "png-rgba", "png-la",
         "jpeg-cmyk", "jpeg-cmyk-progressive", "jpeg-exif-rotated", "webp-alpha")


def _peak(path) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)["peak"]


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict[str, tuple[int, int]]:
    """Each case's (peak bytes, input pixels), the probes run a few at a time."""
    folder = tmp_path_factory.mktemp("big")
    cases = {**_cases(SIDE), "png-gray16-40mp": _png16(_pattern(6324), 0)}
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    with ThreadPoolExecutor(max_workers=3) as pool:
        found = dict(zip(cases, pool.map(_peak, [folder / name for name in cases])))
    return {name: (found[name], Image.open(folder / name).width * Image.open(folder / name).height) for name in cases}


@pytest.mark.parametrize("name", CASES)
def test_peak_decode_memory_is_bounded_per_pixel(peaks, name):
    peak, pixels = peaks[name]
    per_pixel = (peak - images.PEAK_CONSTANT) / pixels
    assert per_pixel <= _bound(name), f"{name}: {peak / 1e6:.0f} MB, {per_pixel:.1f} B/px over the constant"

