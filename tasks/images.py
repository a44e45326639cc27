"""Turning uploaded bytes into a checked RGB/RGBA image, and images back into PNG bytes.

Every way an upload can be unusable ends in `FinalError` with a message for the user: Pillow and
numpy exceptions never leave `decode`. Dimensions are checked from the header before any pixel
is decoded, and big JPEGs are decoded at a reduced DCT scale (`Image.draft`) when the engines
would shrink them anyway, which is most of the decoding cost of a 12 MP photo.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from tasks.errors import FinalError

FORMATS = ("JPEG", "PNG", "WEBP")
MIN_SIDE = 16
WORKING_SIDE = 2000
FLAT_STD = 2.5


def decode(data: bytes, max_pixels: int = 40_000_000, working_side: int | None = WORKING_SIDE) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to an upright RGB or RGBA image, or raise FinalError.

    A JPEG whose long side exceeds `working_side` is decoded at the largest DCT reduction that
    keeps the long side at or above it; pass `working_side=None` for full resolution.
    """
    if not data:
        raise FinalError("The upload is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, max_pixels, working_side)
    except FinalError:
        raise
    except Image.DecompressionBombError:
        raise FinalError(_too_big_message(max_pixels)) from None
    except Image.DecompressionBombWarning:
        raise FinalError(_too_big_message(max_pixels)) from None
    except MemoryError:
        raise FinalError(_too_big_message(max_pixels)) from None
    except Exception:
        raise FinalError("The image could not be read: the file is damaged, truncated or not an image.") from None


def _decode(data: bytes, max_pixels: int, working_side: int | None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise FinalError(_format_message(data)) from None
    width, height = img.size
    if width * height > max_pixels:
        raise FinalError(_too_big_message(max_pixels, width, height))
    if min(width, height) < MIN_SIDE:
        raise FinalError(f"The image is too small ({width}×{height} px): it needs at least {MIN_SIDE} px on each side.")
    if img.format in ("JPEG", "MPO") and working_side and max(width, height) > working_side:
        scale = working_side / max(width, height)
        img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
    img.load()
    img = _upright(img)
    img = _to_rgb(img)
    _check_not_flat(img)
    return img


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGB", "RGBA"):
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32))
        peak = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    has_alpha = img.mode in ("LA", "La", "PA", "RGBa") or (img.mode == "P" and "transparency" in img.info)
    return img.convert("RGBA" if has_alpha else "RGB")


def _check_not_flat(img: Image.Image) -> None:
    arr = np.asarray(img)
    step = max(1, int(np.sqrt(arr.shape[0] * arr.shape[1] / 60_000)))
    sample = arr[::step, ::step].reshape(-1, arr.shape[2]).astype(np.float32)
    if sample.shape[1] == 4:
        if not sample[:, 3].any():
            raise FinalError("The image is fully transparent: there is nothing to trace.")
        alpha = sample[:, 3:] / 255.0
        sample = sample[:, :3] * alpha + 255.0 * (1.0 - alpha)
    if float(sample.std(axis=0).max()) < FLAT_STD:
        raise FinalError("The image is a single flat colour: there is nothing to trace.")


def _format_message(data: bytes) -> str:
    kinds = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"8BPS": "PSD", b"%PDF": "PDF"}
    for magic, name in kinds.items():
        if data.startswith(magic):
            return f"{name} images are not supported: upload a JPEG, PNG or WebP."
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF images are not supported: upload a JPEG, PNG or WebP."
    return "The file is not a readable image: upload a JPEG, PNG or WebP."


def _too_big_message(max_pixels: int, width: int | None = None, height: int | None = None) -> str:
    size = f" ({width}×{height} px)" if width else ""
    return f"The image is too large{size}: the limit is {max_pixels / 1e6:.0f} megapixels."


def encode_png(img: Image.Image) -> bytes:
    """Encode an image as PNG quickly (no optimisation pass, light compression)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def working_size(img: Image.Image, max_side: int) -> Image.Image:
    """Return the image shrunk so its long side is at most `max_side` (unchanged if already smaller)."""
    width, height = img.size
    if max(width, height) <= max_side:
        return img
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
