"""Stencil edges by colour, and no strokes drawn from noise.

Synthetic test images with a known label map: a few random blobs and polygons over a background,
each region one flat colour chosen in CIELAB, plus fine texture (low-amplitude band-limited noise on
L*, a*, b*) and Gaussian sensor noise on the 8-bit RGB. Two sets: "equal" (every region the same L*,
hues far apart: only colour separates them) and "brightness" (regions of different L*, little
chroma). The stencil is scored with a boundary F-measure against the label map's boundary, beside a
blur + Canny reference on the grey image. The generators and the metric are shared with
scripts/bench_colour.py.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage as ndi
from skimage import color, draw, feature

from tasks.core.errors import FinalError
from tasks.stencil import stencil

SIZE = 1024
SEEDS = (1, 2, 3)
TOLERANCE = 3
TEXTURE = 2.0      # L* units, std of the band-limited texture
TEXTURE_SCALE = 2.5  # px, its Gaussian band
SENSOR = 5.0       # 8-bit RGB units, std of the sensor noise
SHAPES = 5


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random blob (smooth star-shaped outline) or a random polygon, about a fifth of the image wide."""
    cy, cx = rng.uniform(0.2, 0.8, 2) * size
    radius = rng.uniform(0.1, 0.22) * size
    if rng.random() < 0.5:
        theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
        wobble = sum(rng.uniform(0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
        r = radius * (1 + wobble)
    else:
        theta = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(4, 8)))
        r = radius * rng.uniform(0.6, 1.2, len(theta))
    rows, cols = draw.polygon(cy + r * np.sin(theta), cx + r * np.cos(theta), (size, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[rows, cols] = True
    return mask


def _palette(kind: str, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` CIELAB colours, all pairwise far apart: same L* and hues spread round the circle, or spread L*."""
    if kind == "equal":
        hues = rng.uniform(0, 2 * np.pi) + np.arange(count) * (2 * np.pi / count)
        lab = np.stack([np.full(count, 60.0), 30 * np.cos(hues), 30 * np.sin(hues)], axis=1)
    else:
        lightness = np.linspace(22, 84, count)
        lab = np.concatenate([lightness[:, None], rng.uniform(-8, 8, (count, 2))], axis=1)
    return lab[rng.permutation(count)]


@lru_cache(maxsize=8)
def scene(kind: str, seed: int, size: int = SIZE, shapes: int = SHAPES) -> tuple[Image.Image, np.ndarray]:
    """An RGB test image and its label map (0 = background, 1.. = the shapes in painting order); cached,
    so treat both as read-only."""
    rng = np.random.default_rng([seed, 0 if kind == "equal" else 1])
    labels = np.zeros((size, size), dtype=np.int32)
    for k in range(1, shapes + 1):
        labels[_shape_mask(rng, size)] = k
    lab = _palette(kind, rng, shapes + 1)[labels]
    texture = ndi.gaussian_filter(rng.standard_normal((3, size, size)), (0, TEXTURE_SCALE, TEXTURE_SCALE))
    texture *= TEXTURE / texture.std(axis=(1, 2), keepdims=True)
    lab += np.moveaxis(texture, 0, -1)
    rgb = color.lab2rgb(lab) * 255 + rng.normal(0, SENSOR, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)), labels


def boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour in another region."""
    edge = np.zeros(labels.shape, dtype=bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def f_measure(ink: np.ndarray, truth: np.ndarray, tolerance: float = TOLERANCE) -> tuple[float, float, float]:
    """(F, precision, recall) of drawn pixels against true boundary pixels, matched within `tolerance` px."""
    if not ink.any():
        return 0.0, 0.0, 0.0
    precision = float((ndi.distance_transform_edt(~truth)[ink] <= tolerance).mean())
    recall = float((ndi.distance_transform_edt(~ink)[truth] <= tolerance).mean())
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f, precision, recall


def canny_ink(img: Image.Image) -> np.ndarray:
    """The blur + Canny reference: grey image, Gaussian blur 2, Canny sigma 1, dilated 3×3 like a stroke."""
    gray = img.convert("L").filter(ImageFilter.GaussianBlur(2))
    edges = feature.canny(np.asarray(gray, dtype=np.float32) / 255, sigma=1.0)
    return ndi.binary_dilation(edges, structure=np.ones((3, 3), dtype=bool))


def stencil_ink(img: Image.Image, engine=stencil) -> np.ndarray:
    """Drawn pixels (< 128) of a stencil on the image grid; no outlines at all is blank paper."""
    try:
        out = engine(img)
    except FinalError as error:
        if "No outlines" not in str(error):
            raise
        return np.zeros((img.height, img.width), dtype=bool)
    assert out.size == img.size
    return np.asarray(out) < 128


def scores(kind: str, method, seeds=SEEDS) -> tuple[float, float, float]:
    """Mean (F, precision, recall) of `method` (image → ink mask) over the set `kind`."""
    results = []
    for seed in seeds:
        img, labels = scene(kind, seed)
        results.append(f_measure(method(img), boundary(labels)))
    return tuple(float(v) for v in np.mean(results, axis=0))


def flat_noisy(size: int = SIZE, seed: int = 0, sensor: float = 8.0, texture: float = 3.0) -> Image.Image:
    """One flat colour with texture and strong sensor noise: nothing to draw."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size, 3)) + (55.0, 12.0, -20.0)
    grain = ndi.gaussian_filter(rng.standard_normal((3, size, size)), (0, TEXTURE_SCALE, TEXTURE_SCALE))
    lab += np.moveaxis(grain * (texture / grain.std(axis=(1, 2), keepdims=True)), 0, -1)
    rgb = color.lab2rgb(lab) * 255 + rng.normal(0, sensor, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


# --- tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def measured():
    cache: dict = {}

    def get(kind: str, method: str) -> tuple[float, float, float]:
        if (kind, method) not in cache:
            cache[kind, method] = scores(kind, stencil_ink if method == "inkq" else canny_ink)
        return cache[kind, method]

    return get


def test_the_generated_sets_are_what_they_claim():
    img, labels = scene("equal", SEEDS[0])
    lab = color.rgb2lab(np.asarray(img.filter(ImageFilter.GaussianBlur(3))) / 255)
    inner = ndi.binary_erosion(boundary(labels) == 0, iterations=6)
    means = np.array([lab[inner & (labels == k)].mean(axis=0) for k in np.unique(labels)])
    assert np.ptp(means[:, 0]) < 3, "equal L* everywhere"
    chroma_gaps = np.hypot(*(means[:, None, 1:] - means[None, :, 1:]).transpose(2, 0, 1))
    assert chroma_gaps[~np.eye(len(means), dtype=bool)].min() > 20, "hues visibly different"
    img, labels = scene("brightness", SEEDS[0])
    lab = color.rgb2lab(np.asarray(img.filter(ImageFilter.GaussianBlur(3))) / 255)
    lightness = np.sort([lab[inner & (labels == k), 0].mean() for k in np.unique(labels)])
    assert np.diff(lightness).min() > 8
    assert boundary(labels).mean() > 0.005


def test_f_measure_scores_perfect_and_shifted_and_empty_drawings():
    _, labels = scene("brightness", SEEDS[0])
    truth = boundary(labels)
    assert f_measure(truth, truth) == (1.0, 1.0, 1.0)
    assert f_measure(np.roll(truth, 3, axis=1), truth)[0] > 0.95
    assert f_measure(np.roll(truth, 12, axis=1), truth)[0] < 0.5
    assert f_measure(np.zeros_like(truth), truth) == (0.0, 0.0, 0.0)


def test_equal_brightness_colour_edges_are_drawn(measured):
    f, precision, recall = measured("equal", "inkq")
    assert f >= 0.8, (f, precision, recall)
    assert f > measured("equal", "canny")[0]


def test_brightness_edges_are_drawn(measured):
    f, precision, recall = measured("brightness", "inkq")
    assert f >= 0.9, (f, precision, recall)
    assert f > measured("brightness", "canny")[0]


@pytest.mark.parametrize("sensor,texture", [(3.0, 1.0), (8.0, 3.0), (16.0, 4.0)])
def test_flat_noisy_image_is_blank_paper(sensor, texture):
    ink = stencil_ink(flat_noisy(sensor=sensor, texture=texture))
    assert ink.mean() < 0.002, ink.mean()


def test_flat_region_in_a_larger_image_stays_empty():
    img, labels = scene("brightness", SEEDS[1])
    rgb = np.asarray(img).copy()
    rgb[:, : SIZE // 3] = np.asarray(flat_noisy(seed=5))[:, : SIZE // 3]
    labels = labels.copy()
    labels[:, : SIZE // 3] = -1
    ink = stencil_ink(Image.fromarray(rgb))
    inside = ndi.binary_erosion(labels == -1, iterations=2 * TOLERANCE, border_value=1)
    assert ink.mean() > 0.005, "the rest of the picture is drawn"
    assert ink[inside].mean() < 0.002, ink[inside].mean()
