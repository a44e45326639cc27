"""Benchmark of the local engines on one core; `make bench` runs it through scripts/bench.sh.

The stencil path is timed end to end (JPEG bytes → decode → stencil → PNG bytes) on a 12 MP photo,
beside the reference most open-source stencil tools use: Gaussian blur, Canny and a dilation on the
full-resolution grayscale. Prints a table and PASS/FAIL against the target; always exits 0.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage as ndi
from skimage import data, feature

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.colormatch import match_colors  # noqa: E402
from tasks.enhance import enhance  # noqa: E402
from tasks.images import decode, encode_png  # noqa: E402
from tasks.stencil import stencil  # noqa: E402

TARGET_S = 1.0


def photo_jpeg(size: tuple[int, int], quality: int = 90, source: str = "astronaut") -> bytes:
    """A skimage photo cropped to the aspect of `size`, resized up, with sensor-like grain, as JPEG."""
    photo = Image.fromarray(getattr(data, source)()).convert("RGB")
    width, height = size
    crop_h = min(photo.height, round(photo.width * height / width))
    crop_w = min(photo.width, round(crop_h * width / height))
    left, top = (photo.width - crop_w) // 2, (photo.height - crop_h) // 2
    photo = photo.crop((left, top, left + crop_w, top + crop_h))
    big = np.asarray(photo.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    grain = np.random.default_rng(0).normal(0, 3.0, big.shape[:2])[..., None]
    big = np.clip(big + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def canny_reference(jpeg: bytes) -> bytes:
    """The common open-source stencil: full decode, blur, Canny, dilate, invert, PNG."""
    gray = Image.open(io.BytesIO(jpeg)).convert("L").filter(ImageFilter.GaussianBlur(2))
    edges = feature.canny(np.asarray(gray, dtype=np.float32) / 255, sigma=1.0)
    edges = ndi.binary_dilation(edges, structure=np.ones((3, 3), dtype=bool))
    return encode_png(Image.fromarray(np.where(edges, 0, 255).astype(np.uint8), "L"))


def inkq_stencil(jpeg: bytes) -> bytes:
    """The inkq path a stencil job runs."""
    return encode_png(stencil(decode(jpeg)))


def timed(fn, *args, runs: int) -> tuple[tuple[float, float], object]:
    """Median wall and CPU seconds of `runs` calls after one warm-up call, and the last result."""
    result = fn(*args)
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn(*args)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return (statistics.median(wall), statistics.median(cpu)), result


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="where the outputs are written")
    args = parser.parse_args()

    jpeg = photo_jpeg((4000, 3000))
    small = decode(photo_jpeg((1024, 1024)))
    print(f"input: 4000×3000 JPEG, {len(jpeg) / 1e6:.1f} MB; median of {args.runs} runs after a warm-up, one core")

    decode_s, img = timed(decode, jpeg, runs=args.runs)
    stencil_s, line_art = timed(stencil, img, runs=args.runs)
    encode_s, _ = timed(encode_png, line_art, runs=args.runs)
    total_s, png = timed(inkq_stencil, jpeg, runs=args.runs)
    canny_s, canny_png = timed(canny_reference, jpeg, runs=args.runs)
    enhance_s, _ = timed(enhance, small, runs=args.runs)
    match_s, _ = timed(match_colors, small, 6, runs=args.runs)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stencil-12mp.png").write_bytes(png)
    (args.out / "canny-12mp.png").write_bytes(canny_png)

    rows = [
        ("12 MP stencil, inkq (bytes → PNG)", total_s, f"{line_art.width}×{line_art.height} output"),
        ("  decode (draft-mode JPEG)", decode_s, f"{img.width}×{img.height}"),
        ("  stencil", stencil_s, ""),
        ("  encode PNG", encode_s, ""),
        ("12 MP stencil, Canny reference", canny_s, "4000×3000 output"),
        ("1 MP enhance (2×)", enhance_s, f"{small.width}×{small.height} → 2×"),
        ("1 MP colour match (6 inks)", match_s, ""),
    ]
    print(f"{'':<38} {'wall s':>8} {'cpu s':>8}")
    for label, (wall, cpu), note in rows:
        print(f"{label:<38} {wall:8.3f} {cpu:8.3f}  {note}")
    print(f"{'ratio inkq / Canny':<38} {total_s[0] / canny_s[0]:8.2f} {total_s[1] / canny_s[1]:8.2f}")
    verdict = "PASS" if total_s[0] <= TARGET_S else "FAIL"
    print(f"{verdict}: 12 MP stencil in {total_s[0]:.3f} s wall (target ≤ {TARGET_S:.1f} s on one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
