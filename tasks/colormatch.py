"""Dominant colours of a design matched to the tattoo-ink palette shipped in `data/inks.json`.

Colours are clustered with k-means in CIELAB on a seeded pixel sample, so the same image always
gives the same palette; near-white and transparent pixels count as background (skin or paper),
not ink. Each cluster takes the nearest ink by CIEDE2000, and clusters that land on the same
ink are merged.
"""
from __future__ import annotations

import json
import operator
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.cluster.vq import kmeans2
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab

from tasks.core.errors import FinalError
from tasks.core.progress import Reporter, silent
from tasks.images import working_size

INKS_PATH = Path(__file__).with_name("data") / "inks.json"
COLOR_RANGE = (1, 12)
PREVIEW_SIDE = 1024
SAMPLE = 20_000
SEED = 7
WHITE_L = 90.0
WHITE_CHROMA = 10.0
MIN_INK_FRACTION = 0.002


@lru_cache(maxsize=1)
def inks() -> tuple[list[dict], np.ndarray]:
    """The ink palette: its entries (name, hex) and their CIELAB values, shape (n, 3)."""
    entries = json.loads(INKS_PATH.read_text())["inks"]
    rgb = np.array([[int(e["hex"][i:i + 2], 16) for i in (1, 3, 5)] for e in entries], dtype=np.float64)
    return entries, rgb2lab(rgb[None] / 255.0)[0]


def match_colors(img: Image.Image, colors: int = 6,
                 report: Reporter = silent) -> tuple[Image.Image, list[dict]]:
    """Find up to `colors` dominant ink colours; return a posterised preview and the palette."""
    low, high = COLOR_RANGE
    try:
        colors = operator.index(colors)
    except TypeError:
        colors = None
    if colors is None or not low <= colors <= high:
        raise FinalError(f"The number of colours must be a whole number between {low} and {high}.")
    report(30, "finding colours")
    small = working_size(img, PREVIEW_SIDE)
    rgb, visible = _pixels(small)
    lab = rgb2lab(rgb).astype(np.float32)
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    ink = visible & ~((lab[..., 0] >= WHITE_L) & (chroma <= WHITE_CHROMA))
    count = int(ink.sum())
    if count < max(16, MIN_INK_FRACTION * ink.size):
        raise FinalError("no ink colours found: the image is blank or almost white")

    pixels = lab[ink]
    centres = _kmeans(pixels, colors)
    report(60, "matching inks")
    labels = _nearest(pixels, centres)
    shares = np.bincount(labels, minlength=len(centres)) / count
    entries, ink_lab = inks()
    distance = deltaE_ciede2000(centres[:, None, :].astype(np.float64), ink_lab[None, :, :])
    choice = distance.argmin(axis=1)

    palette = []
    for ink_index in np.unique(choice[shares > 0]):
        members = np.nonzero((choice == ink_index) & (shares > 0))[0]
        share = shares[members].sum()
        source = (centres[members] * shares[members, None]).sum(axis=0) / share
        palette.append({
            "name": entries[ink_index]["name"],
            "hex": entries[ink_index]["hex"].upper(),
            "coverage": round(float(share) * 100, 1),
            "deltaE": round(float(deltaE_ciede2000(source.astype(np.float64), ink_lab[ink_index])), 2),
            "sourceHex": _hex(source),
        })
    palette.sort(key=lambda entry: entry["coverage"], reverse=True)

    report(75, "drawing preview")
    ink_rgb = np.array([[int(e["hex"][i:i + 2], 16) for i in (1, 3, 5)] for e in entries], dtype=np.uint8)
    preview = np.full(rgb.shape, 255, dtype=np.uint8)
    preview[ink] = ink_rgb[choice[labels]]
    return Image.fromarray(preview, "RGB"), palette


def _pixels(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """RGB in 0..1 composited on white, and the mask of pixels that are not transparent."""
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] * alpha + (1 - alpha)
        return rgb, rgba[..., 3] >= 0.5
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    return rgb, np.ones(rgb.shape[:2], dtype=bool)


def _kmeans(pixels: np.ndarray, k: int) -> np.ndarray:
    """Seeded k-means++ centres of a pixel sample; fewer than `k` when the image has fewer colours."""
    rng = np.random.default_rng(SEED)
    sample = pixels if len(pixels) <= SAMPLE else pixels[rng.choice(len(pixels), SAMPLE, replace=False)]
    distinct = np.unique(np.round(sample).astype(np.int16), axis=0)
    k = max(1, min(k, len(distinct)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centres, labels = kmeans2(sample.astype(np.float64), k, iter=25, minit="++", missing="warn", rng=rng)
    used = np.bincount(labels, minlength=k) > 0
    return centres[used].astype(np.float32)


def _nearest(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean in CIELAB) for each pixel."""
    best = np.zeros(len(pixels), dtype=np.intp)
    best_distance = np.full(len(pixels), np.inf, dtype=np.float32)
    for i, centre in enumerate(centres):
        distance = ((pixels - centre) ** 2).sum(axis=1)
        closer = distance < best_distance
        best[closer] = i
        best_distance[closer] = distance[closer]
    return best


def _hex(lab: np.ndarray) -> str:
    rgb = np.clip(lab2rgb(lab.astype(np.float64)[None, None, :])[0, 0], 0, 1)
    return "#" + "".join(f"{round(float(v) * 255):02X}" for v in rgb)
