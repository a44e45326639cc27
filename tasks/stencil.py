"""Photo to tattoo stencil: clean black line art on white, computed locally with numpy/scipy.

The lines are found on a fixed analysis grid (long side `ANALYSIS_SIDE`) so a 12 MP photo and
its 1 MP copy give the same drawing, then drawn as pen strokes of uniform width on the output
grid (long side between `MIN_OUTPUT_SIDE` and `MAX_OUTPUT_SIDE`, the input's aspect ratio kept).

Standard pipeline: edge-preserving denoise (fast guided filter), difference of Gaussians
normalised by local contrast, smoothing of that response along the edge flow (a cheap
flow-based DoG), surround suppression of texture, hysteresis threshold, removal of short
strokes, skeleton, bridging of small gaps between stroke ends, and rendering from a distance
field so the strokes are anti-aliased and as wide as the line weight asks.

Topographic: isolines of the heavily smoothed, histogram-equalised luminance at
`CONTOUR_LEVELS` levels, drawn from their approximate pixel distance, plus the strongest
outlines of the standard pipeline.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import apply_hysteresis_threshold
from skimage.morphology import skeletonize

from tasks.errors import FinalError
from tasks.progress import Reporter, silent

STYLES = {"standard": 1.0, "fine": 0.6, "bold": 1.8, "topographic": 1.0}
LINE_WEIGHT_RANGE = (0.5, 3.0)
ANALYSIS_SIDE = 1024
MIN_OUTPUT_SIDE = 1024
MAX_OUTPUT_SIDE = 2000
STROKE_PER_SIDE = 1 / 520
CONTOUR_LEVELS = 8

DOG_SIGMA = 1.3
DOG_K = 1.6
CONTRAST_FLOOR = 0.06
SURROUND = 1.0
HIGH = 0.055
LOW = 0.02
MIN_STROKE = 30
STRONG = 0.2
GAP = 8

_EIGHT = np.ones((3, 3), dtype=bool)


def stencil(img: Image.Image, style: str = "standard", line_weight: float | None = None,
            transparent: bool = False, report: Reporter = silent) -> Image.Image:
    """Trace `img` into a stencil: mode L black on white, or RGBA black lines on transparent."""
    if style not in STYLES:
        raise FinalError(f"Unknown stencil style {style!r}: choose one of {', '.join(STYLES)}.")
    weight = STYLES[style] if line_weight is None else float(line_weight)
    low, high = LINE_WEIGHT_RANGE
    if not low <= weight <= high:
        raise FinalError(f"The line weight must be between {low} and {high}.")

    out_size = output_size(img.size)
    report(30, "denoising")
    gray = _analysis_gray(img)
    smooth = _guided(gray, radius=2, eps=0.003)
    report(45, "tracing lines")
    strength = _line_strength(smooth)
    lines = _lines(strength, HIGH, LOW)
    report(65, "cleaning")
    if style == "topographic":
        outline = _lines(strength, HIGH * 2.5, LOW * 2)
        distance = np.minimum(_stroke_distance(outline), _contour_distance(smooth))
    else:
        distance = _stroke_distance(lines)
    report(80, "drawing")
    width = weight * max(out_size) * STROKE_PER_SIDE
    return _render(distance, out_size, width, transparent)


def output_size(size: tuple[int, int]) -> tuple[int, int]:
    """The stencil size for an input size: same aspect, long side clamped to the output range."""
    width, height = size
    side = min(max(width, height, MIN_OUTPUT_SIDE), MAX_OUTPUT_SIDE)
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _analysis_gray(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    gray = img.convert("L")
    width, height = gray.size
    scale = ANALYSIS_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gray = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(gray, dtype=np.float32)
    lo, hi = np.percentile(arr[::4, ::4], [0.5, 99.5])
    span = max(float(hi - lo), 25.0)
    return np.clip((arr - np.float32(lo)) * np.float32(1 / span), 0, 1)


def _resize(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), "F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _shrink(arr: np.ndarray, factor: int) -> np.ndarray:
    h, w = arr.shape[0] // factor * factor, arr.shape[1] // factor * factor
    return arr[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def _wide_blur(arr: np.ndarray, sigma: float) -> np.ndarray:
    factor = max(1, int(sigma // 3))
    small = ndi.gaussian_filter(_shrink(arr, factor), sigma / factor, truncate=3.0)
    return _resize(small, arr.shape)


def _guided(gray: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Self-guided filter computed at half resolution (He & Sun's fast guided filter)."""
    small = _shrink(gray, 2)
    size = 2 * radius + 1
    mean = ndi.uniform_filter(small, size)
    var = ndi.uniform_filter(small * small, size) - mean * mean
    a = var / (var + np.float32(eps))
    b = mean - a * mean
    a = _resize(ndi.uniform_filter(a, size), gray.shape)
    b = _resize(ndi.uniform_filter(b, size), gray.shape)
    return a * gray + b


def _line_strength(gray: np.ndarray) -> np.ndarray:
    """Dark-side DoG response, contrast-normalised, smoothed along edges, texture-suppressed."""
    dog = ndi.gaussian_filter(gray, DOG_SIGMA * DOG_K, truncate=3.0)
    dog -= ndi.gaussian_filter(gray, DOG_SIGMA, truncate=3.0)
    np.maximum(dog, 0, out=dog)
    mean = _wide_blur(gray, 24)
    std = np.sqrt(np.maximum(_wide_blur(gray * gray, 24) - mean * mean, 0))
    strength = dog / (std + np.float32(CONTRAST_FLOOR))
    strength = _flow_smooth(strength, gray)
    near = ndi.gaussian_filter(strength, 2.0, truncate=3.0)
    far = _wide_blur(strength, 8.0)
    ring = (far - near * np.float32((2.0 / 8.0) ** 2)) * np.float32(1 / (1 - (2.0 / 8.0) ** 2))
    return np.maximum(strength - np.float32(SURROUND) * ring, 0)


def _flow_smooth(strength: np.ndarray, gray: np.ndarray, steps: int = 4, sigma: float = 2.0) -> np.ndarray:
    """Average the response along the local edge tangent (structure tensor at half resolution)."""
    small = _shrink(gray, 2)
    gx = ndi.sobel(small, axis=1)
    gy = ndi.sobel(small, axis=0)
    jxx = ndi.gaussian_filter(gx * gx, 1.5, truncate=3.0)
    jxy = ndi.gaussian_filter(gx * gy, 1.5, truncate=3.0)
    jyy = ndi.gaussian_filter(gy * gy, 1.5, truncate=3.0)
    theta = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    tx, ty = -np.sin(theta), np.cos(theta)
    h, w = strength.shape
    rows = np.minimum(np.arange(h) // 2, small.shape[0] - 1)
    cols = np.minimum(np.arange(w) // 2, small.shape[1] - 1)
    padded = np.pad(strength, steps, mode="edge")
    stride = padded.shape[1]
    base = (np.arange(h)[:, None] + steps) * stride + (np.arange(w)[None, :] + steps)
    flat = padded.ravel()
    total = strength.copy()
    weight_sum = 1.0
    for k in range(1, steps + 1):
        wk = float(np.exp(-k * k / (2 * sigma * sigma)))
        offset = np.rint(k * ty).astype(np.intp) * stride + np.rint(k * tx).astype(np.intp)
        offset = offset[rows][:, cols]
        total += np.float32(wk) * flat[base + offset]
        total += np.float32(wk) * flat[base - offset]
        weight_sum += 2 * wk
    return total * np.float32(1 / weight_sum)


def _lines(strength: np.ndarray, high: float, low: float) -> np.ndarray:
    """Hysteresis-thresholded strokes without short isolated ones, lightly smoothed."""
    mask = apply_hysteresis_threshold(strength, low, high)
    labels, count = ndi.label(mask, structure=_EIGHT)
    if count == 0:
        return mask
    index = np.arange(1, count + 1)
    extent = np.array([max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(labels)])
    mean = ndi.mean(strength, labels, index)
    keep = (extent >= MIN_STROKE) | ((extent >= MIN_STROKE / 3) & (mean >= STRONG))
    mask = np.concatenate([[False], keep])[labels]
    return ndi.gaussian_filter(mask.astype(np.float32), 1.0, truncate=2.0) > 0.45


def _stroke_distance(mask: np.ndarray) -> np.ndarray:
    """Distance (analysis px) to the stroke centrelines, with small gaps bridged."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    skeleton = skeletonize(mask)
    _bridge_gaps(skeleton, GAP)
    return ndi.distance_transform_edt(~skeleton).astype(np.float32)


def _bridge_gaps(skeleton: np.ndarray, reach: int) -> None:
    """Extend stroke ends along their direction until they meet another stroke within `reach` px."""
    neighbours = ndi.convolve(skeleton.view(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    ends = np.argwhere(skeleton & (neighbours == 2))
    if len(ends) == 0:
        return
    labels, _ = ndi.label(skeleton, structure=_EIGHT)
    h, w = skeleton.shape
    directions = np.zeros((len(ends), 2), dtype=np.float32)
    for i, (y, x) in enumerate(ends):
        y0, y1, x0, x1 = max(0, y - 4), min(h, y + 5), max(0, x - 4), min(w, x + 5)
        ys, xs = np.nonzero(labels[y0:y1, x0:x1] == labels[y, x])
        directions[i] = y - (ys.mean() + y0), x - (xs.mean() + x0)
    norm = np.hypot(directions[:, 0], directions[:, 1])
    ok = norm > 0.5
    ends, directions = ends[ok], directions[ok] / norm[ok, None]
    own = labels[ends[:, 0], ends[:, 1]]
    open_ = np.ones(len(ends), dtype=bool)
    for k in range(2, reach + 1):
        ys = np.rint(ends[:, 0] + k * directions[:, 0]).astype(np.intp)
        xs = np.rint(ends[:, 1] + k * directions[:, 1]).astype(np.intp)
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
        hit = open_ & inside & skeleton[ys, xs]
        hit &= (labels[ys, xs] != own) | (k >= 4)
        for i in np.nonzero(hit)[0]:
            steps = np.arange(1, k)
            skeleton[np.rint(ends[i, 0] + steps * directions[i, 0]).astype(np.intp),
                     np.rint(ends[i, 1] + steps * directions[i, 1]).astype(np.intp)] = True
        open_ &= ~hit & inside


def _contour_distance(gray: np.ndarray) -> np.ndarray:
    """Approximate distance (analysis px) to isolines of the smoothed, equalised luminance."""
    smooth = ndi.gaussian_filter(gray, 3.0, truncate=3.0)
    sample = np.sort(smooth[::4, ::4], axis=None)
    ranks = np.searchsorted(sample, smooth.ravel()).reshape(smooth.shape).astype(np.float32)
    level = ranks * np.float32(CONTOUR_LEVELS / len(sample))
    gy, gx = np.gradient(level)
    slope = np.hypot(gx, gy)
    nearest = np.clip(np.rint(level), 1, CONTOUR_LEVELS - 1)
    distance = np.abs(level - nearest) / (slope + np.float32(1e-3))
    iso = distance < 1.0
    labels, count = ndi.label(iso, structure=_EIGHT)
    if count:
        extent = np.array([max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(labels)])
        short = np.concatenate([[True], extent < MIN_STROKE])[labels]
        distance[short & iso] = np.inf
    return distance


def _render(distance: np.ndarray, size: tuple[int, int], width: float, transparent: bool) -> Image.Image:
    """Draw strokes `width` output px wide, anti-aliased, from the analysis-grid distance field."""
    scale = size[0] / distance.shape[1]
    quant = np.minimum(distance * np.float32(scale * 16), 255).astype(np.uint8)
    field = Image.fromarray(quant, "L").resize(size, Image.Resampling.BILINEAR)
    half = width / 2
    lut = [round(255 * min(1.0, max(0.0, half - v / 16 + 0.5))) for v in range(256)]
    ink = field.point(lut)
    if transparent:
        black = Image.new("L", size, 0)
        return Image.merge("RGBA", (black, black, black, ink))
    return ink.point(lambda v: 255 - v)
