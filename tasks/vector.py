"""Stencils as SVG (`format: "svg"`): closed, smooth outline paths of the ink, for vinyl cutters,
thermal printers and print shops.

The tracer is potrace (Debian package `potrace`, GPL, run as a program): it fits optimal Bézier
outlines to a bitmap. vtracer (Rust, wheels on PyPI) was measured against it on the stencils of
three photographs: its spline fitting thickens 2-px strokes, so the rendered SVG matched the PNG's
ink at IoU 0.77-0.80 even when traced at 3× and drawn thinner, against 0.81-0.82 for potrace, which
was also 3× faster and made SVGs half the size.

Strokes are a couple of pixels wide at the output size, where fitting a curve moves an outline by a
large share of the stroke, so the ink is traced at `SCALE` times the output size and the SVG's
viewBox maps it back. The local engine draws that copy exactly from its distance field
(`tasks/stencil.py`); a stencil from elsewhere (Gemini) is upscaled and traced as it is.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess

from PIL import Image

from .core.errors import FinalError

SCALE = 3
INK_BELOW = 128
TURD = 2 * SCALE  # specks of fewer traced pixels are dropped
ALPHAMAX = 1.0  # potrace's corner threshold (its default)
TOLERANCE = 0.2  # potrace's curve optimisation tolerance (its default)
TIMEOUT_S = 60


def trace(ink: Image.Image, size: tuple[int, int]) -> str:
    """The SVG of the black ink in `ink` (black on white, any scale), shown at `size` px."""
    program = shutil.which("potrace")
    if program is None:
        raise FinalError("SVG output is not available on this worker (the potrace program is missing).")
    binary = ink.convert("L").point(lambda v: 0 if v < INK_BELOW else 255).convert("1")
    buf = io.BytesIO()
    binary.save(buf, "BMP")
    done = subprocess.run([program, "--svg", "--flat", "--output", "-", "--turdsize", str(TURD),
                           "--alphamax", str(ALPHAMAX), "--opttolerance", str(TOLERANCE)],
                          input=buf.getvalue(), capture_output=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"potrace failed: {done.stderr.decode(errors='replace')[:200]}")
    svg = done.stdout.decode()
    # potrace sizes the drawing in pt; show it at the stencil's pixel size, keeping its viewBox
    return re.sub(r'width="[^"]*" height="[^"]*"', f'width="{size[0]}" height="{size[1]}"', svg, count=1)


def from_image(img: Image.Image) -> str:
    """Trace a finished stencil image (black lines on white or on transparent)."""
    if img.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    big = img.convert("L").resize((img.width * SCALE, img.height * SCALE), Image.Resampling.LANCZOS)
    return trace(big, img.size)


def rasterize(svg: str) -> Image.Image:
    """Render an SVG (resvg) onto white, mode L: how a viewer or printer will see it."""
    import resvg_py

    rgba = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=svg)))).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("L")
