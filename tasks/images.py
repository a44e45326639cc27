"""Turning uploaded bytes into a checked RGB/RGBA image, and images back into PNG bytes.

Every way an upload can be unusable ends in `FinalError` with a message for the user: Pillow and
numpy exceptions never leave `decode`. Dimensions are checked from the header before any pixel
is decoded.

Memory (a 383 KB 16-bit grey PNG of 6324×6324 once took 578 MB through a
whole-image float32 copy). The engines work on small grids (stencil 1024 px analysis and at most
2000 px output, colour match 1024 px, enhance at most `enhance.INPUT_PIXELS`), so `decode` hands
back no more than they need: a big JPEG is decoded at a reduced DCT scale (`Image.draft`, which is
also most of the decoding time of a 12 MP photo), and any image is then box-reduced (`Image.reduce`)
by the largest whole factor that keeps its long side at or above `working_side` and its area at or
above `working_pixels`. The conversion to 8-bit RGB/RGBA (16-bit, palette, grey, LA, CMYK) and the
reduction run one `TILE` at a time into the output, so no second full-size copy is ever made; the
EXIF turn and the flat-image check are done on the result. Measured peak RSS of `decode` plus each
engine's first step, in a fresh process (tests/tasks/test_decode_memory.py):

    peak <= PEAK_BYTES_PER_PIXEL (8) bytes per input pixel + PEAK_CONSTANT (64 MiB)

for PNG of any bit depth and colour type and baseline JPEG (RGB, grey, CMYK, EXIF-turned). Two
decoders need more, and Pillow 13 offers no way round either: a progressive JPEG adds libjpeg's
whole-image coefficient buffer, 2 bytes per pixel per component, before any DCT scaling
(`PEAK_BYTES_PROGRESSIVE_JPEG`, 12 for CMYK); WebP is decoded only through libwebp's animation
decoder, which keeps two full RGBA canvases beside the frame Pillow copies into a bytes object and
then into the image (`PEAK_BYTES_WEBP`, 17). The full 8 B/px is reached only below 4000 px a side,
where nothing is reduced; at the 40 MP `MAX_PIXELS` everything is reduced at least 3× and the
measured peaks are 118 MB for the 16-bit grey PNG (578 MB before), 193 MB for an RGBA PNG, 363 MB for
a progressive CMYK JPEG and 644 MB for an RGBA WebP.
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

from tasks.core.errors import FinalError

FORMATS = ("JPEG", "PNG", "WEBP")
MIN_SIDE = 16
WORKING_SIDE = 2000
FLAT_STD = 2.5
TILE = 1024
DEEP = ("I;16", "I;16B", "I;16L", "I")  # more than 8 bits a sample: scaled with numpy, one tile at a time
# The memory bound stated in the docstring: peak <= bytes per input pixel * pixels + PEAK_CONSTANT.
PEAK_BYTES_PER_PIXEL = 8
PEAK_BYTES_PROGRESSIVE_JPEG = 12
PEAK_BYTES_WEBP = 17
PEAK_CONSTANT = 64 * 2**20


def decode(data: bytes, max_pixels: int = 40_000_000, working_side: int | None = WORKING_SIDE,
           working_pixels: int = 0) -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to an upright RGB or RGBA image, or raise FinalError.

    A big image is reduced by the largest whole factor (a JPEG first by DCT scaling) that keeps its
    long side at or above `working_side` and its area at or above `working_pixels`; pass
    `working_side=None` for full resolution.
    """
    if not data:
        raise FinalError("The upload is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(data, max_pixels, working_side, working_pixels)
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


def _decode(data: bytes, max_pixels: int, working_side: int | None, working_pixels: int) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.UnidentifiedImageError:
        raise FinalError(_format_message(data)) from None
    width, height = img.size
    if width * height > max_pixels:
        raise FinalError(_too_big_message(max_pixels, width, height))
    if min(width, height) < MIN_SIDE:
        raise FinalError(f"The image is too small ({width}×{height} px): it needs at least {MIN_SIDE} px on each side.")
    factor = reduction(img.size, working_side, working_pixels)
    if img.format in ("JPEG", "MPO") and factor > 1:
        img.draft("RGB", (width // factor, height // factor))
    img.load()
    exif = _exif(img)
    img = _working(img, reduction(img.size, working_side, working_pixels))
    img = _upright(img, exif)
    _check_not_flat(img)
    return img


def reduction(size: tuple[int, int], working_side: int | None, working_pixels: int = 0) -> int:
    """The largest whole factor that keeps the long side >= `working_side` and the area >= `working_pixels`."""
    if not working_side:
        return 1
    width, height = size
    factor = max(width, height) // working_side
    if working_pixels:
        factor = min(factor, math.isqrt(width * height // working_pixels))
    return max(1, factor)


def _working(img: Image.Image, factor: int) -> Image.Image:
    """`img` as 8-bit RGB or RGBA, box-reduced `factor` times, converted one tile at a time."""
    mode = "RGBA" if _has_alpha(img) else "RGB"
    # A WebP image from Pillow 13 keeps libwebp's animation decoder (two full canvases, 8 B/px) for
    # as long as it lives, so it is always copied out, which costs nothing above its load peak.
    if factor == 1 and img.mode == mode and img.format != "WEBP":
        return img
    width, height = img.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    peak = 65535.0 if img.mode in DEEP and img.getextrema()[1] > 255 else 255.0
    step = factor * max(1, TILE // factor)
    for top in range(0, height, step):
        for left in range(0, width, step):
            tile = _eight_bit(img.crop((left, top, min(width, left + step), min(height, top + step))), mode, peak)
            out.paste(tile.reduce(factor) if factor > 1 else tile, (left // factor, top // factor))
    return out


def _eight_bit(tile: Image.Image, mode: str, peak: float) -> Image.Image:
    if tile.mode in DEEP:
        arr = np.asarray(tile, dtype=np.float32)
        tile = Image.fromarray(np.clip(arr * np.float32(255.0 / peak) + np.float32(0.5), 0, 255).astype(np.uint8))
    return tile.convert(mode)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "La", "PA", "RGBa") or (img.mode == "P" and "transparency" in img.info)


def _exif(img: Image.Image) -> Image.Exif:
    try:
        return img.getexif()
    except Exception:
        return Image.Exif()


def _upright(img: Image.Image, exif: Image.Exif) -> Image.Image:
    """`img` turned as the source's EXIF (or XMP) orientation says; a damaged EXIF block is ignored."""
    try:
        if exif.get(ExifTags.Base.Orientation, 1) == 1:
            return img
        img.info["exif"] = exif.tobytes()
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def _check_not_flat(img: Image.Image) -> None:
    step = max(1, int(np.sqrt(img.width * img.height / 60_000)))
    sample = img.resize((-(-img.width // step), -(-img.height // step)), Image.Resampling.NEAREST)
    arr = np.asarray(sample)
    sample = arr.reshape(-1, arr.shape[2]).astype(np.float32)
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
