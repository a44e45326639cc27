"""Render the comparison figures in docs/images/ from skimage.data photos.

stencil-comparison.png  photo | Canny reference | inkq standard | inkq topographic, one row per photo
enhance-comparison.png  crops of a plain bicubic 2× resize beside inkq enhance
color-match.png         photo | ink preview | palette swatches
flat-colour.png         generated flat-colour designs (equal-brightness and brightness edges, with texture and
                        noise): input | Canny reference | inkq before colour edges | inkq now
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import canny_reference, photo_jpeg  # noqa: E402
from tasks.colormatch import match_colors  # noqa: E402
from tasks.enhance import enhance  # noqa: E402
from tasks.images import decode  # noqa: E402
from tasks.stencil import stencil  # noqa: E402

from skimage import data  # noqa: E402

CELL = 440
GAP = 6
LABEL = 30
BACKGROUND = (236, 236, 236)


def font(size: int = 18) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` px."""
    return ImageFont.load_default(size=size)


def labelled(cells: list[list[Image.Image]], labels: list[str], cell: int = CELL) -> Image.Image:
    """Lay out rows of images (scaled to `cell` px wide) under a header of column labels."""
    rows = []
    for row in cells:
        scaled = [im.convert("RGB").resize((cell, round(cell * im.height / im.width)), Image.Resampling.LANCZOS)
                  for im in row]
        rows.append(scaled)
    width = len(labels) * cell + (len(labels) + 1) * GAP
    height = LABEL + sum(r[0].height for r in rows) + (len(rows) + 1) * GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, text in enumerate(labels):
        draw.text((GAP + i * (cell + GAP) + cell // 2, LABEL // 2 + 2), text, fill=(30, 30, 30), font=font(), anchor="mm")
    y = LABEL + GAP
    for row in rows:
        for i, im in enumerate(row):
            sheet.paste(im, (GAP + i * (cell + GAP), y))
        y += row[0].height + GAP
    return sheet


def stencil_comparison(names: list[str], side: int) -> Image.Image:
    """Each photo as a `side`-px phone-like JPEG, through the Canny reference and inkq."""
    rows = []
    for name in names:
        photo = Image.fromarray(getattr(data, name)())
        size = (side, round(side * photo.height / photo.width))
        jpeg = photo_jpeg(size, source=name)
        img = decode(jpeg)
        canny = Image.open(io.BytesIO(canny_reference(jpeg)))
        rows.append([img, canny, stencil(img), stencil(img, style="topographic")])
    return labelled(rows, ["photo", "Canny reference", "inkq standard", "inkq topographic"])


def enhance_comparison() -> Image.Image:
    """Crops at 1:1 of the 2× results: bicubic resize vs inkq enhance, on a clean and a noisy photo."""
    rng = np.random.default_rng(0)
    noisy = np.clip(data.chelsea().astype(np.float32) + rng.normal(0, 7, data.chelsea().shape), 0, 255)
    cases = [(Image.fromarray(data.astronaut()), (190, 60, 340, 210)),
             (Image.fromarray(noisy.astype(np.uint8)), (130, 40, 280, 190))]
    rows = []
    for img, box in cases:
        out = enhance(img)
        bicubic = img.resize(out.size, Image.Resampling.BICUBIC)
        crop = tuple(2 * v for v in box)
        rows.append([bicubic.crop(crop), out.crop(crop)])
    return labelled(rows, ["bicubic 2x", "inkq enhance 2x (noisy input below)"], cell=300)


def color_match_figure(name: str, colors: int) -> Image.Image:
    """Photo, ink preview and the palette as swatches with name, hex and coverage."""
    img = Image.fromarray(getattr(data, name)())
    preview, palette = match_colors(img, colors=colors)
    swatch_h = 40
    panel = Image.new("RGB", (img.width, max(img.height, swatch_h * len(palette) + 20)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for i, entry in enumerate(palette):
        y = 10 + i * swatch_h
        draw.rectangle((10, y, 60, y + swatch_h - 8), fill=entry["sourceHex"])
        draw.rectangle((62, y, 112, y + swatch_h - 8), fill=entry["hex"])
        text = f'{entry["name"]}  {entry["hex"]}  {entry["coverage"]:.1f}%  dE {entry["deltaE"]:.1f}'
        draw.text((122, y + (swatch_h - 8) // 2), text, fill=(20, 20, 20), font=font(16), anchor="lm")
    panel = panel.crop((0, 0, img.width, img.height))
    return labelled([[img, preview, panel]], ["photo", "ink preview", "photo colour | ink, coverage, CIEDE2000"])


def flat_colour_figure(before: str) -> Image.Image:
    """The issue-11 test designs through Canny, the engine at git revision `before`, and this one."""
    from bench_colour import engine_at
    from tests.tasks.test_colour_edges import canny_ink, scene, stencil_ink

    old = engine_at(before)
    rows = []
    for kind in ("equal", "brightness"):
        img, _ = scene(kind, 1)
        ink = [canny_ink(img), stencil_ink(img, old), stencil_ink(img)]
        rows.append([img] + [Image.fromarray(np.where(drawn, 0, 255).astype(np.uint8)) for drawn in ink])
    return labelled(rows, ["design (top: equal brightness)", "Canny reference", f"inkq before ({before})", "inkq now"])


def save(img: Image.Image, path: Path, colors: int | None = None) -> None:
    """Save as PNG, palettised to `colors` entries when given (keeps line-art sheets small)."""
    if colors:
        img = img.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    img.save(path, optimize=True)
    print(f"{path}  {img.width}×{img.height}  {path.stat().st_size / 1024:.0f} KB")


def main() -> int:
    """Write the three figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    parser.add_argument("--side", type=int, default=2000, help="long side of the phone-like JPEGs")
    parser.add_argument("--before", default="8083e01", help="git revision of the engine before colour edges")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    save(stencil_comparison(["astronaut", "chelsea", "coffee"], args.side), args.out / "stencil-comparison.png", 128)
    save(enhance_comparison(), args.out / "enhance-comparison.png")
    save(color_match_figure("coffee", 6), args.out / "color-match.png", 256)
    save(flat_colour_figure(args.before), args.out / "flat-colour.png", 128)
    return 0


if __name__ == "__main__":
    sys.exit(main())
