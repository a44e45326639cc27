"""Photo enhancement: 2× larger, denoised, mild local contrast, sharpened only where there is detail.

Work happens in YCbCr. Luma is denoised with a guided filter whose strength follows the noise
level measured in the photo (Immerkær's estimator), given mild CLAHE, upscaled with Lanczos and
sharpened with a thresholded unsharp mask so flat areas gain no grain. Chroma is smoothed (colour
noise is what makes phone photos look cheap) and upscaled. The input is first shrunk so the
result stays within `MAX_OUTPUT_PIXELS`; the job decodes a big upload straight to at least
`INPUT_PIXELS` (`tasks/images.decode`'s `working_pixels`), so no float work is ever done above that.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage as ndi
from skimage.exposure import equalize_adapthist

from tasks.core.progress import Reporter, silent
from tasks.images import working_size

SCALE = 2
MAX_OUTPUT_PIXELS = 16_000_000
INPUT_PIXELS = MAX_OUTPUT_PIXELS // SCALE ** 2
DENOISE = 2.0
CLAHE_LIMIT = 0.008
CLAHE_MIX = 0.35
SHARPEN = ImageFilter.UnsharpMask(radius=1.6, percent=70, threshold=3)
FINE_SHARPEN = ImageFilter.UnsharpMask(radius=0.8, percent=50, threshold=2)


def enhance(img: Image.Image, report: Reporter = silent) -> Image.Image:
    """Return `img` twice as large, denoised, with mild local contrast and sharpened detail."""
    img = _capped(img)
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    y, cb, cr = img.convert("RGB").convert("YCbCr").split()
    size = (img.width * SCALE, img.height * SCALE)

    report(30, "denoising")
    luma = np.asarray(y, dtype=np.float32) / 255
    sigma = noise_sigma(luma)
    luma = _guided(luma, radius=2, eps=max((DENOISE * sigma) ** 2, 1e-5))
    chroma_radius = 1.0 + 40 * sigma
    cb = cb.filter(ImageFilter.GaussianBlur(chroma_radius))
    cr = cr.filter(ImageFilter.GaussianBlur(chroma_radius))

    report(50, "local contrast")
    clahe = equalize_adapthist(np.clip(luma, 0, 1), clip_limit=CLAHE_LIMIT).astype(np.float32)
    luma = (1 - CLAHE_MIX) * luma + CLAHE_MIX * clahe
    y = Image.fromarray(np.clip(luma * 255 + 0.5, 0, 255).astype(np.uint8), "L")

    report(65, "upscaling")
    y = y.resize(size, Image.Resampling.LANCZOS)
    cb = cb.resize(size, Image.Resampling.BICUBIC)
    cr = cr.resize(size, Image.Resampling.BICUBIC)

    report(80, "sharpening")
    y = y.filter(SHARPEN).filter(FINE_SHARPEN)
    out = Image.merge("YCbCr", (y, cb, cr)).convert("RGB")
    if alpha is not None:
        out.putalpha(alpha.resize(size, Image.Resampling.BICUBIC))
    return out


def noise_sigma(gray: np.ndarray) -> float:
    """Estimate the standard deviation of Gaussian noise in a 0..1 grayscale image (Immerkær 1996)."""
    if min(gray.shape) < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = np.abs(ndi.convolve(gray, kernel, mode="reflect"))[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * response.mean() / 6)


def _capped(img: Image.Image) -> Image.Image:
    pixels = img.width * img.height * SCALE * SCALE
    if pixels <= MAX_OUTPUT_PIXELS:
        return img
    shrink = (MAX_OUTPUT_PIXELS / pixels) ** 0.5
    return working_size(img, int(max(img.size) * shrink))


def _guided(gray: np.ndarray, radius: int, eps: float) -> np.ndarray:
    size = 2 * radius + 1
    mean = ndi.uniform_filter(gray, size)
    var = ndi.uniform_filter(gray * gray, size) - mean * mean
    a = var / (var + np.float32(eps))
    b = mean - a * mean
    return ndi.uniform_filter(a, size) * gray + ndi.uniform_filter(b, size)
