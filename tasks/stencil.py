"""Photo to tattoo stencil: clean black line art on white, computed locally with numpy/scipy.

Lines are found on a fixed analysis grid (long side `ANALYSIS_SIDE`), so a 12 MP photo and its
1 MP copy give the same drawing, and drawn as pen strokes of one width on the output grid (long
side clamped to `MIN_OUTPUT_SIDE`..`MAX_OUTPUT_SIDE`, the input's aspect ratio kept).

Standard pipeline, all vectorised: luminance and CIELAB a*, b* (in the same units, so a step of
ΔE in hue weighs like the same step in L*) on the analysis grid; edge-preserving denoise (fast
guided filter, per channel); two edge responses, the dark-side difference of Gaussians of the
luminance (lines on the dark side of brightness edges, and dark lines themselves) and the Gaussian
gradient magnitude of a*, b* (edges between colours of equal brightness), each minus a multiple of
its own noise floor: the robust (MAD) spread of that response over the picture, or over its
`NOISE_TILE` px tile where that is larger (a noisier part of the picture), which is the sensor noise
and fine grain as they reach that filter after resampling and denoising, so flat areas give exactly
nothing whatever their noise or texture; the larger of the two, mildly normalised by local
contrast, at the analysis scale blended with the same at half of it (so soft, upscaled photos still
give closed outlines); smoothing of that response along the edge flow where the orientation
(Di Zenzo's structure tensor over luminance and colour) is coherent (a cheap flow-based DoG); surround
suppression, which weakens responses packed among many others (fur, grain, foliage) more than
isolated contours; hysteresis on connected components, which also drops short isolated strokes and
specks; non-maximum suppression across the edge for one-pixel centrelines; skeleton, removal of
short spurs, bridging of small gaps between a stroke end and the stroke it points at; and rendering
from a sub-pixel distance field, so strokes are smooth, anti-aliased and exactly as wide as the
line weight asks. tests/tasks/test_colour_edges.py and scripts/bench_colour.py score it on
generated scenes with known boundaries (boundary F-measure) against a blur + Canny reference.

Topographic: isolines at `CONTOUR_LEVELS` levels of the luminance after a strong edge-preserving
smoothing (half equalised, so each band covers a fair share of the picture), drawn from their
approximate pixel distance, skipping flat areas and steep edges, plus the strongest outlines.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from tasks.core.errors import FinalError
from tasks.core.progress import Reporter, silent

STYLES = {"standard": 1.0, "fine": 0.6, "bold": 1.8, "topographic": 1.0}
LINE_WEIGHT_RANGE = (0.5, 3.0)
ANALYSIS_SIDE = 1024
MIN_OUTPUT_SIDE = 1024
MAX_OUTPUT_SIDE = 2000
STROKE_PER_SIDE = 1 / 520
CONTOUR_LEVELS = 7
CONTOUR_SMOOTH = 6.0
CONTOUR_STEEP = 0.25
CONTOUR_FLAT = 0.025
CONTOUR_EQUALISE = 0.5
CONTOUR_GUIDED = 12
CONTOUR_EPS = 0.02
TOPO_OUTLINE = 6.0

DENOISE_RADIUS = 2
DENOISE_EPS = 0.001
DOG_SIGMA = 1.3
DOG_K = 1.6
CONTRAST_FLOOR = 0.06
CONTRAST_WEIGHT = 0.25  # of the local luminance std in the normaliser (1.0 before noise gating)
NOISE_K = 2.5  # luminance DoG kept above this many noise stds (MAD) of itself
COLOUR_NOISE_K = 2.5  # colour gradient kept above this many rms noise stds of its components
NOISE_LOCAL = 0.75  # weight of the tile floor against the whole picture's
NOISE_TILE = 128  # px of the analysis grid per tile of the local noise floor
COLOUR_WEIGHT = 0.36  # DoG peak / gradient peak for one step: a hue step draws like an L* step
LSTAR_TO_LEVELS = 2.4  # grey levels per unit of L* (and of a*, b*)
SURROUND = 1.0
HIGH = 0.055
LOW = 0.02
MIN_STROKE = 30
GAP = 8
FLOW_COHERENT = 0.5
SALIENT = 4.0
MIN_DOT = 6
MIN_FRAGMENT = 12
FRAGMENT_BEFORE_BRIDGING = 9
UPSCALE_BLUR = 0.3
ANGLES = 16
FINE_WEIGHT = 0.8
COARSE_WEIGHT = 0.5
NMS_REACH = 2
SPUR = 5

_EIGHT = np.ones((3, 3), dtype=bool)


def stencil(img: Image.Image, style: str = "standard", line_weight: float | None = None,
            transparent: bool = False, report: Reporter = silent, vector: dict | None = None) -> Image.Image:
    """Trace `img` into a stencil: mode L black on white, or RGBA black lines on transparent.

    With `vector` (a dict), its "svg" is also set: the same strokes as SVG outlines (`tasks/vector.py`)."""
    if style not in STYLES:
        raise FinalError(f"Unknown stencil style {style!r}: choose one of {', '.join(STYLES)}.")
    low, high = LINE_WEIGHT_RANGE
    try:
        weight = STYLES[style] if line_weight is None else float(line_weight)
    except (TypeError, ValueError):
        weight = float("nan")
    if not low <= weight <= high:
        raise FinalError(f"The line weight must be a number between {low} and {high}.")

    out_size = output_size(img.size)
    report(30, "denoising")
    gray, chroma = _analysis_image(img)
    smooth = _guided(gray, DENOISE_RADIUS, DENOISE_EPS)
    chroma = np.stack([_guided(c, DENOISE_RADIUS, DENOISE_EPS) for c in chroma])
    report(45, "tracing lines")
    strength, angle = _line_strength(smooth, chroma)
    coarse, _ = _line_strength(_shrink(smooth, 2), np.stack([_shrink(c, 2) for c in chroma]))
    strength = np.float32(FINE_WEIGHT) * strength + np.float32(COARSE_WEIGHT) * _resize(coarse, strength.shape)
    report(65, "cleaning")
    if style == "topographic":
        outline = _lines(strength, angle, HIGH * TOPO_OUTLINE, LOW * TOPO_OUTLINE)
        distance = np.minimum(_stroke_distance(outline, strength, angle, MIN_STROKE), _contour_distance(smooth))
    else:
        distance = _stroke_distance(_lines(strength, angle, HIGH, LOW), strength, angle, MIN_FRAGMENT)
    if not np.isfinite(distance).any():
        raise FinalError("No outlines could be traced: the image is too small, too blurry or too flat.")
    report(80, "drawing")
    width = weight * max(out_size) * STROKE_PER_SIDE
    if vector is not None:
        from . import vector as vectors

        report(85, "tracing the SVG")
        big = (out_size[0] * vectors.SCALE, out_size[1] * vectors.SCALE)
        vector["svg"] = vectors.trace(_render(distance, big, width * vectors.SCALE, False), out_size)
    return _render(distance, out_size, width, transparent)


def output_size(size: tuple[int, int]) -> tuple[int, int]:
    """The stencil size for an input size: same aspect, long side clamped to the output range."""
    width, height = size
    side = min(max(width, height, MIN_OUTPUT_SIDE), MAX_OUTPUT_SIDE)
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _analysis_image(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Luminance stretched to 0..1 and CIELAB a*, b* in the same units, on the analysis grid."""
    width, height = img.size
    scale = ANALYSIS_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if img.mode in ("LA", "PA") else "RGB")
    rgb = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if rgb.mode == "RGBA":  # resized first (Pillow resizes RGBA premultiplied), then laid on white
        rgb = Image.alpha_composite(Image.new("RGBA", size, (255, 255, 255, 255)), rgb).convert("RGB")
    arr = np.asarray(rgb.convert("L"), dtype=np.float32)
    chroma = _chroma(np.asarray(rgb))
    if scale > 1.5:
        arr = ndi.gaussian_filter(arr, UPSCALE_BLUR * scale, truncate=3.0)
        chroma = ndi.gaussian_filter(chroma, (0, UPSCALE_BLUR * scale, UPSCALE_BLUR * scale), truncate=3.0)
    lo, hi = np.percentile(arr[::4, ::4], [0.5, 99.5])
    span = max(float(hi - lo), 25.0)
    chroma *= np.float32(LSTAR_TO_LEVELS / span)
    return np.clip((arr - np.float32(lo)) * np.float32(1 / span), 0, 1), chroma


_LINEAR = np.where(np.arange(256) <= 10, np.arange(256) / 255 / 12.92,
                   ((np.arange(256) / 255 + 0.055) / 1.055) ** 2.4).astype(np.float32)
_XYZ = (np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
        / np.array([[0.95047], [1.0], [1.08883]])).astype(np.float32)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """CIELAB a*, b* (D65) of 8-bit sRGB, as a (2, h, w) float32 array."""
    linear = _LINEAR[rgb]
    f = []
    for row in _XYZ:
        t = linear @ row
        f.append(np.where(t > 0.008856, np.cbrt(t), t * np.float32(7.787) + np.float32(16 / 116)))
    return np.stack([np.float32(500) * (f[0] - f[1]), np.float32(200) * (f[1] - f[2])])


def _resize(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), "F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _shrink(arr: np.ndarray, factor: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr, "F").reduce(factor)) if factor > 1 else arr


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


def _line_strength(gray: np.ndarray, chroma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line response (dark-side DoG of luminance or colour gradient, above the noise floor,
    contrast-normalised, flow-smoothed, texture-suppressed) and edge angles."""
    fine = ndi.gaussian_filter(gray, DOG_SIGMA, truncate=3.0)
    dog = ndi.gaussian_filter(gray, DOG_SIGMA * DOG_K, truncate=3.0) - fine
    dog = np.maximum(dog - np.float32(NOISE_K) * _noise_floor(dog), 0)
    gradients = [ndi.gaussian_filter(c, DOG_SIGMA, order=order, truncate=3.0)
                 for c in chroma for order in ((0, 1), (1, 0))]
    noise = np.sqrt(sum(_noise_floor(g) ** 2 for g in gradients))
    colour = np.sqrt(sum(g * g for g in gradients))
    colour = np.maximum(colour - np.float32(COLOUR_NOISE_K) * noise, 0) * np.float32(COLOUR_WEIGHT)
    mean = _wide_blur(gray, 24)
    std = np.sqrt(np.maximum(_wide_blur(gray * gray, 24) - mean * mean, 0))
    strength = np.maximum(dog, colour) / (np.float32(CONTRAST_WEIGHT) * std + np.float32(CONTRAST_FLOOR))
    angle, coherence = _orientation(np.concatenate([gray[None], chroma]))
    strength = _flow_smooth(strength, angle, coherence)
    near = ndi.gaussian_filter(strength, 2.0, truncate=3.0)
    far = _wide_blur(strength, 8.0)
    ring = (far - near * np.float32((2.0 / 8.0) ** 2)) * np.float32(1 / (1 - (2.0 / 8.0) ** 2))
    return np.maximum(strength - np.float32(SURROUND) * ring, 0), angle


def _mad(arr: np.ndarray) -> float:
    """Robust noise std of a filter response (median absolute deviation, on a quarter of the pixels)."""
    sample = arr[::2, ::2].ravel()
    return 1.4826 * float(np.median(np.abs(sample - np.median(sample))))


def _noise_floor(arr: np.ndarray) -> np.ndarray | float:
    """Noise std of a filter response, per pixel: the larger of the picture's MAD and that of its
    `NOISE_TILE` px tile (so a noisier or grainier part of the picture gets its own, higher floor)."""
    whole = _mad(arr)
    sample = arr[::2, ::2]
    tile = int(NOISE_TILE) // 2
    rows, cols = sample.shape[0] // tile, sample.shape[1] // tile
    if rows < 2 or cols < 2:
        return whole
    tiles = sample[:rows * tile, :cols * tile].reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(rows, cols, -1)
    local = 1.4826 * np.median(np.abs(tiles - np.median(tiles, axis=2, keepdims=True)), axis=2)
    return np.maximum(_resize(local.astype(np.float32), arr.shape) * np.float32(NOISE_LOCAL), np.float32(whole))


def _orientation(channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient direction quantised to `ANGLES` bins over 180°, and its coherence 0..1 (Di Zenzo's
    colour structure tensor, summed over the channels)."""
    jxx = jxy = jyy = 0
    for channel in channels:
        small = _shrink(channel, 2)
        gx = ndi.sobel(small, axis=1)
        gy = ndi.sobel(small, axis=0)
        jxx, jxy, jyy = jxx + gx * gx, jxy + gx * gy, jyy + gy * gy
    jxx = ndi.gaussian_filter(jxx, 1.5, truncate=3.0)
    jxy = ndi.gaussian_filter(jxy, 1.5, truncate=3.0)
    jyy = ndi.gaussian_filter(jyy, 1.5, truncate=3.0)
    angle = np.rint(np.arctan2(2 * jxy, jxx - jyy) * np.float32(ANGLES / (2 * np.pi))).astype(np.intp) % ANGLES
    coherence = np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy + np.float32(1e-6))
    return _half_to_full(angle, channels.shape[1:]), _half_to_full(coherence, channels.shape[1:])


def _offsets(angle: np.ndarray, step: float, stride: int, along: bool) -> np.ndarray:
    """Flat-index offsets of `step` px along the edge (or across it) for each pixel's angle bin."""
    gradient = np.arange(ANGLES) * (np.pi / ANGLES)
    dx, dy = (-np.sin(gradient), np.cos(gradient)) if along else (np.cos(gradient), np.sin(gradient))
    return (np.rint(step * dy) * stride + np.rint(step * dx)).astype(np.int32)[angle]


def _flow_smooth(strength: np.ndarray, angle: np.ndarray, coherence: np.ndarray, steps: int = 4,
                 sigma: float = 2.0) -> np.ndarray:
    """Average the response along the local edge tangent where the orientation is coherent."""
    h, w = strength.shape
    padded = np.pad(strength, steps, mode="edge")
    stride = padded.shape[1]
    base = (np.arange(h, dtype=np.int32)[:, None] + steps) * stride + np.arange(w, dtype=np.int32) + steps
    flat = padded.ravel()
    total = strength.copy()
    weight_sum = 1.0
    for k in range(1, steps + 1):
        wk = float(np.exp(-k * k / (2 * sigma * sigma)))
        offset = _offsets(angle, k, stride, along=True)
        total += np.float32(wk) * (flat[base + offset] + flat[base - offset])
        weight_sum += 2 * wk
    smoothed = total * np.float32(1 / weight_sum)
    mix = np.clip(coherence * np.float32(1 / FLOW_COHERENT), 0, 1)
    return strength + mix * (smoothed - strength)


def _ridges(strength: np.ndarray, angle: np.ndarray, reach: int) -> np.ndarray:
    """Pixels where the response peaks across the edge (non-maximum suppression along the normal)."""
    h, w = strength.shape
    padded = np.pad(strength, reach, mode="edge")
    stride = padded.shape[1]
    base = (np.arange(h, dtype=np.int32)[:, None] + reach) * stride + np.arange(w, dtype=np.int32) + reach
    flat = padded.ravel()
    peak = np.ones(strength.shape, dtype=bool)
    for k in range(1, reach + 1):
        offset = _offsets(angle, k, stride, along=False)
        peak &= (strength >= flat[base + offset]) & (strength >= flat[base - offset])
    return peak


def _half_to_full(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    full = np.repeat(np.repeat(arr, 2, axis=0), 2, axis=1)[:shape[0], :shape[1]]
    return np.pad(full, ((0, shape[0] - full.shape[0]), (0, shape[1] - full.shape[1])), mode="edge")


def _lines(strength: np.ndarray, angle: np.ndarray, high: float, low: float) -> np.ndarray:
    """Centrelines of hysteresis-thresholded strokes, without short isolated ones."""
    labels, count = ndi.label(strength > low, structure=_EIGHT)
    if count == 0:
        return np.zeros(strength.shape, dtype=bool)
    extent = np.array([0] + [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(labels)])
    total = np.bincount(labels.ravel(), strength.ravel(), count + 1)
    seeded = np.zeros(count + 1, dtype=bool)
    seeded[labels[strength >= high]] = True
    keep = seeded & ((extent >= MIN_STROKE) | ((extent >= MIN_DOT) & (total >= SALIENT)))
    keep[0] = False
    return keep[labels] & _ridges(strength, angle, NMS_REACH)


def _stroke_distance(mask: np.ndarray, strength: np.ndarray, angle: np.ndarray, shortest: int) -> np.ndarray:
    """Distance (analysis px) to stroke centrelines at least `shortest` px long, small gaps bridged, sub-pixel."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    skeleton = _without_fragments(skeletonize(mask), FRAGMENT_BEFORE_BRIDGING)
    _prune_spurs(skeleton, SPUR)
    _bridge_gaps(skeleton, GAP)
    skeleton = _without_fragments(skeleton, shortest)
    if not skeleton.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    ys, xs = np.nonzero(skeleton)
    normal = angle[ys, xs] * (np.pi / ANGLES)
    ny, nx = np.sin(normal), np.cos(normal)
    centre = strength[ys, xs]
    ahead = ndi.map_coordinates(strength, [ys + ny, xs + nx], order=1, mode="nearest")
    behind = ndi.map_coordinates(strength, [ys - ny, xs - nx], order=1, mode="nearest")
    curvature = ahead - 2 * centre + behind
    shift = np.where(curvature < -1e-6, (behind - ahead) / (2 * np.minimum(curvature, -1e-6)), 0)
    shift = np.clip(shift, -0.5, 0.5)
    offset_y = np.zeros(mask.shape, dtype=np.float32)
    offset_x = np.zeros(mask.shape, dtype=np.float32)
    offset_y[ys, xs] = shift * ny
    offset_x[ys, xs] = shift * nx
    near_y, near_x = ndi.distance_transform_edt(~skeleton, return_distances=False, return_indices=True)
    nearest = (near_y * mask.shape[1] + near_x).ravel()
    rows = np.arange(mask.shape[0], dtype=np.float32)[:, None]
    cols = np.arange(mask.shape[1], dtype=np.float32)[None, :]
    dy = rows - near_y.astype(np.float32) - offset_y.ravel()[nearest].reshape(mask.shape)
    dx = cols - near_x.astype(np.float32) - offset_x.ravel()[nearest].reshape(mask.shape)
    return np.sqrt(dy * dy + dx * dx)


def _without_fragments(skeleton: np.ndarray, length: int) -> np.ndarray:
    """Drop strokes shorter than `length` px, unless they are small closed shapes (pupils)."""
    labels, count = ndi.label(skeleton, structure=_EIGHT)
    size = np.bincount(labels.ravel(), minlength=count + 1)
    extent = np.array([0] + [max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(labels)])
    keep = (extent >= length) | ((size >= MIN_DOT) & (size >= 2 * extent))
    keep[0] = False
    return keep[labels]


def _prune_spurs(skeleton: np.ndarray, length: int) -> None:
    """Remove side branches shorter than `length` px that end in a free end."""
    neighbours = ndi.convolve(skeleton.view(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    junctions = _grow(skeleton & (neighbours >= 4))
    segments = skeleton & ~junctions
    labels, count = ndi.label(segments, structure=_EIGHT)
    if count == 0:
        return
    size = np.bincount(labels.ravel(), minlength=count + 1)
    free = np.bincount(labels[segments & (neighbours == 2)], minlength=count + 1) > 0
    attached = np.bincount(labels[segments & _grow(junctions)], minlength=count + 1) > 0
    spur = free & attached & (size < length)
    spur[0] = False
    skeleton &= ~spur[labels]


def _grow(mask: np.ndarray) -> np.ndarray:
    return ndi.maximum_filter(mask.view(np.uint8), 3).view(bool)


def _bridge_gaps(skeleton: np.ndarray, reach: int) -> None:
    """Extend stroke ends along their direction until they meet another stroke within `reach` px."""
    neighbours = ndi.convolve(skeleton.view(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    ends = np.argwhere(skeleton & (neighbours == 2))
    if len(ends) == 0:
        return
    labels, _ = ndi.label(skeleton, structure=_EIGHT)
    h, w = skeleton.shape
    own = labels[ends[:, 0], ends[:, 1]]
    dy, dx = np.mgrid[-4:5, -4:5].reshape(2, 1, -1)
    ys, xs = ends[:, :1] + dy[0], ends[:, 1:] + dx[0]
    near = labels[np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)] == own[:, None]
    near &= (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    count = near.sum(axis=1)
    directions = -np.stack([(near * dy[0]).sum(axis=1), (near * dx[0]).sum(axis=1)], axis=1) / count[:, None]
    norm = np.hypot(directions[:, 0], directions[:, 1])
    ok = norm > 0.5
    ends, own, directions = ends[ok], own[ok], directions[ok] / norm[ok, None]
    open_ = np.ones(len(ends), dtype=bool)
    for k in range(2, reach + 1):
        ys = np.rint(ends[:, 0] + k * directions[:, 0]).astype(np.intp)
        xs = np.rint(ends[:, 1] + k * directions[:, 1]).astype(np.intp)
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
        hit = open_ & inside & skeleton[ys, xs] & ((labels[ys, xs] != own) | (k >= 4))
        for i in np.nonzero(hit)[0]:
            steps = np.arange(1, k)
            skeleton[np.rint(ends[i, 0] + steps * directions[i, 0]).astype(np.intp),
                     np.rint(ends[i, 1] + steps * directions[i, 1]).astype(np.intp)] = True
        open_ &= ~hit & inside


def _contour_distance(gray: np.ndarray) -> np.ndarray:
    """Approximate distance (analysis px) to isolines of the smoothed, equalised luminance."""
    smooth = _wide_blur(_guided(gray, CONTOUR_GUIDED, CONTOUR_EPS), CONTOUR_SMOOTH)
    bins = np.minimum((smooth * 1023).astype(np.intp), 1023)
    cdf = np.cumsum(np.bincount(bins[::2, ::2].ravel(), minlength=1024)).astype(np.float32)
    equalised = cdf * np.float32(1 / cdf[-1])
    ramp = np.linspace(0, 1, 1024, dtype=np.float32)
    level = ((CONTOUR_EQUALISE * equalised + (1 - CONTOUR_EQUALISE) * ramp) * CONTOUR_LEVELS)[bins]
    level = ndi.gaussian_filter(level, 2.0, truncate=3.0)
    gy, gx = np.gradient(level)
    slope = np.hypot(gx, gy)
    nearest = np.clip(np.rint(level), 1, CONTOUR_LEVELS - 1)
    distance = np.abs(level - nearest) / (slope + np.float32(1e-3))
    drawn = (slope < CONTOUR_STEEP) & (slope > CONTOUR_FLAT)
    iso = (distance < 1.0) & drawn
    labels, count = ndi.label(iso, structure=_EIGHT)
    keep = np.zeros(1, dtype=bool)
    if count:
        extent = np.array([max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(labels)])
        keep = np.concatenate([[False], extent >= 2 * MIN_STROKE])
    distance[~keep[labels] | ~drawn] = np.inf
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
