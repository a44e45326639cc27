"""The local engines in process, on real photographs from skimage.data: decode, stencil, enhance, colour match."""
from __future__ import annotations

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageFilter
from scipy import ndimage as ndi
from skimage import data, feature
from skimage.morphology import skeletonize

from tasks import enhance as enhance_module
from tasks.colormatch import inks, match_colors
from tasks.core.errors import FinalError
from tasks.enhance import enhance
from tasks.images import decode, encode_png, working_size
from tasks.stencil import output_size, stencil

PHOTOS = ("astronaut", "chelsea", "coffee")


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`×`height` but whose IDAT holds a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def ink(img: Image.Image) -> np.ndarray:
    """Per-pixel ink coverage 0..1 of a stencil (L: darkness, RGBA: alpha)."""
    if img.mode == "RGBA":
        return np.asarray(img.getchannel("A"), dtype=np.float32) / 255
    return 1 - np.asarray(img, dtype=np.float32) / 255


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas and bounding-box extents (long side) of the 8-connected components of a mask."""
    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel())[1:]
    extents = np.array([max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in ndi.find_objects(labels)])
    return areas, extents


class Recorder:
    def __init__(self):
        self.calls: list[tuple[int, str]] = []

    def __call__(self, progress: int, stage: str) -> None:
        self.calls.append((progress, stage))


@pytest.fixture(scope="module")
def stencils():
    cache: dict = {}

    def make(name: str, style: str = "standard", **options) -> Image.Image:
        key = (name, style, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = stencil(photo(name), style=style, **options)
        return cache[key]

    return make


# decode / encode


def test_decode_accepts_jpeg_png_webp_as_rgb():
    img = photo("chelsea")
    for fmt in ("JPEG", "PNG", "WEBP"):
        out = decode(encoded(img, fmt))
        assert out.mode == "RGB" and out.size == img.size, fmt


def test_decode_keeps_alpha_and_converts_other_modes():
    rgba = photo("coffee").convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    assert decode(encoded(rgba, "PNG")).mode == "RGBA"
    assert decode(encoded(photo("coffee").convert("L"), "PNG")).mode == "RGB"
    assert decode(encoded(photo("coffee").convert("P"), "PNG")).mode == "RGB"
    deep = (np.asarray(photo("coffee").convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    out = decode(encoded(Image.fromarray(deep), "PNG"))
    assert out.mode == "RGB"
    assert abs(float(np.asarray(out)[..., 0].mean()) - float(deep.mean()) / 257) < 1.0


def test_decode_applies_exif_orientation():
    img = photo("chelsea")
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encoded(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (img.height, img.width)


def test_decode_drafts_big_jpegs_to_the_working_size():
    big = encoded(photo("coffee").resize((4000, 2667), Image.Resampling.BICUBIC), "JPEG", quality=85)
    reduced = decode(big)
    assert 2000 <= reduced.width < 4000
    assert reduced.width / reduced.height == pytest.approx(4000 / 2667, rel=0.01)
    assert decode(big, working_side=None).size == (4000, 2667)


def test_decode_reduces_big_images_tile_by_tile_like_a_whole_image_reduce():
    rgba = photo("coffee").resize((4100, 2730), Image.Resampling.BICUBIC).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    out = decode(encoded(rgba, "PNG", compress_level=1))
    assert out.mode == "RGBA" and out.size == (2050, 1365)
    assert np.array_equal(np.asarray(out), np.asarray(rgba.reduce(2)))
    deep = (np.asarray(rgba.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    grey = decode(encoded(Image.fromarray(deep), "PNG", compress_level=1), working_pixels=4_000_000)
    assert grey.size == (4100, 2730)  # halving would leave fewer than 4 MP
    assert np.array_equal(np.asarray(grey)[..., 0], np.asarray(rgba.convert("L")))


@pytest.mark.parametrize("fmt, word", [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_decode_rejects_other_formats(fmt, word):
    with pytest.raises(FinalError, match=word):
        decode(encoded(photo("chelsea"), fmt))


@pytest.mark.parametrize("payload", [
    pytest.param(b"", id="empty"),
    pytest.param(np.random.default_rng(1).bytes(5000), id="random"),
    pytest.param(b"\xff\xd8\xff\xe0" + np.random.default_rng(2).bytes(3000), id="jpeg-magic-then-garbage"),
])
def test_decode_rejects_garbage(payload):
    with pytest.raises(FinalError):
        decode(payload)


def test_decode_rejects_truncated_jpeg():
    whole = encoded(photo("astronaut"), "JPEG", quality=90)
    with pytest.raises(FinalError, match="damaged|truncated"):
        decode(whole[: len(whole) // 2])


def test_decode_rejects_tiny_images():
    with pytest.raises(FinalError, match="too small"):
        decode(encoded(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    with pytest.raises(FinalError, match="too small"):
        decode(encoded(photo("chelsea").resize((400, 10)), "PNG"))


def test_decode_rejects_single_colour_images():
    noise = np.random.default_rng(3).integers(-1, 2, (300, 400, 3))
    flat = np.clip(np.array([200, 120, 40]) + noise, 0, 255).astype(np.uint8)
    with pytest.raises(FinalError, match="single flat colour"):
        decode(encoded(Image.fromarray(flat), "PNG"))
    with pytest.raises(FinalError, match="transparent"):
        decode(encoded(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG"))


def test_line_art_on_transparency_is_not_flat():
    art = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    art.paste((0, 0, 0, 255), (20, 100, 180, 104))
    assert decode(encoded(art, "PNG")).mode == "RGBA"


@pytest.mark.parametrize("width, height", [(8000, 6000), (100_000, 100_000)])
def test_decode_refuses_huge_headers_without_decoding_pixels(monkeypatch, width, height):
    def no_pixels(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    start = time.perf_counter()
    with pytest.raises(FinalError, match="too large"):
        decode(png_claiming(width, height))
    assert time.perf_counter() - start < 0.5


def test_decode_honours_max_pixels():
    with pytest.raises(FinalError, match="too large"):
        decode(encoded(photo("chelsea"), "PNG"), max_pixels=100_000)


def test_encode_png_round_trips():
    img = photo("chelsea")
    png = encode_png(img)
    assert png.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), np.asarray(img))


def test_working_size_shrinks_only():
    img = photo("coffee")
    small = working_size(img, 300)
    assert max(small.size) == 300 and small.width / small.height == pytest.approx(1.5, rel=0.01)
    assert working_size(img, 5000) is img


# stencil


@pytest.mark.parametrize("name", PHOTOS)
def test_stencil_is_clean_line_art(stencils, name):
    src = photo(name)
    out = stencils(name)
    assert out.mode == "L"
    assert out.size == output_size(src.size)
    assert max(out.size) == 1024
    assert out.width / out.height == pytest.approx(src.width / src.height, rel=0.01)

    pixels = np.asarray(out)
    black = pixels < 128
    assert 0.005 < black.mean() < 0.25, "mostly white with a sensible amount of line"
    assert ((pixels > 32) & (pixels < 224)).mean() < 0.06, "binary apart from anti-aliasing"

    areas, extents = components(black)
    specks = areas < 20
    assert specks.sum() <= max(10, 0.15 * len(areas)), "few isolated specks"
    assert areas[specks].sum() < 0.02 * black.sum()
    assert np.median(extents) >= 15, "strokes, not dots"


def junction_density(black: np.ndarray) -> float:
    """Branch points per 1000 px of centreline: hatching and edge nets score high, clean strokes low."""
    skeleton = skeletonize(black)
    neighbours = ndi.convolve(skeleton.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant") - 1
    return 1000 * float((skeleton & (neighbours >= 3)).sum()) / max(1, int(skeleton.sum()))


@pytest.mark.parametrize("name", PHOTOS)
def test_stencil_has_fewer_tangles_than_a_canny_stencil(stencils, name):
    out = stencils(name)
    gray = photo(name).convert("L").resize(out.size).filter(ImageFilter.GaussianBlur(2))
    canny = ndi.binary_dilation(feature.canny(np.asarray(gray, dtype=np.float32) / 255, sigma=1.0),
                                structure=np.ones((3, 3), dtype=bool))
    ours = junction_density(np.asarray(out) < 128)
    assert ours < 30
    assert ours < 0.5 * junction_density(canny)


def test_stencil_is_a_line_drawing_not_a_tone_map(stencils):
    out = np.asarray(stencils("astronaut"))
    dark_suit = np.asarray(photo("astronaut").convert("L").resize((1024, 1024)))[400:560, 460:600]
    assert dark_suit.mean() < 60
    assert (out[400:560, 460:600] < 128).mean() < 0.2, "dark areas are outlined, not filled"


def test_line_weight_and_styles(stencils):
    fine, standard, bold = (ink(stencils("astronaut", s)).sum() for s in ("fine", "standard", "bold"))
    assert fine < standard < bold
    assert bold > 2 * fine
    heavy = ink(stencils("astronaut", line_weight=3.0)).sum()
    assert heavy > bold
    assert np.array_equal(np.asarray(stencils("astronaut", "bold", line_weight=1.0)), np.asarray(stencils("astronaut")))


def test_topographic_draws_long_contours(stencils):
    for name in ("astronaut", "chelsea"):
        topo = np.asarray(stencils(name, "topographic")) < 128
        standard = np.asarray(stencils(name)) < 128
        assert topo.shape == standard.shape
        assert (topo & ~standard).sum() > 0.5 * topo.sum(), "mostly lines the standard style does not draw"
        _, extents = components(topo)
        assert (extents > 0.25 * max(topo.shape)).sum() >= 5, "long isolines"
        assert 0.01 < topo.mean() < 0.25


def test_transparent_stencil_has_alpha(stencils):
    out = stencils("chelsea", transparent=True)
    assert out.mode == "RGBA"
    rgba = np.asarray(out)
    assert rgba[..., :3].max() == 0
    assert (rgba[..., 3] == 0).mean() > 0.75
    assert np.array_equal(255 - rgba[..., 3], np.asarray(stencils("chelsea")))


def test_stencil_reports_progress_inside_its_range():
    report = Recorder()
    big = photo("coffee").resize((2400, 1600))
    out = stencil(big, report=report)
    assert max(out.size) == 2000
    progress = [p for p, _ in report.calls]
    assert progress == sorted(progress) and 25 <= min(progress) and max(progress) <= 85
    assert {"denoising", "tracing lines", "cleaning"} <= {s for _, s in report.calls}


def test_stencil_of_a_cut_out_traces_its_outline():
    cut = Image.new("RGBA", (600, 600), (0, 0, 0, 0))
    cut.paste(photo("chelsea").crop((100, 50, 300, 250)).convert("RGBA"), (200, 200))
    black = np.asarray(stencil(cut)) < 128
    rows, cols = np.nonzero(black)
    assert rows.min() < 420 and rows.max() > 620 and cols.min() < 420 and cols.max() > 620


def test_stencil_refuses_images_without_outlines():
    with pytest.raises(FinalError, match="No outlines"):
        stencil(photo("astronaut").resize((16, 16)))


@pytest.mark.parametrize("options", [dict(style="sketchy"), dict(line_weight=0.2), dict(line_weight=3.5),
                                     dict(line_weight="heavy"), dict(line_weight=float("nan"))])
def test_stencil_rejects_bad_options(options):
    with pytest.raises(FinalError):
        stencil(photo("chelsea"), **options)


# enhance


def sharpness(img: Image.Image) -> float:
    gray = np.asarray(img.convert("L"), dtype=np.float32)
    return float(ndi.laplace(gray).var())


def test_enhance_is_twice_as_large_and_sharper_than_bicubic():
    src = photo("astronaut")
    report = Recorder()
    out = enhance(src, report=report)
    assert out.mode == "RGB" and out.size == (1024, 1024)
    bicubic = src.resize(out.size, Image.Resampling.BICUBIC)
    assert sharpness(out) > 1.5 * sharpness(bicubic)
    diff = np.abs(np.asarray(out, dtype=np.float32) - np.asarray(bicubic, dtype=np.float32)).mean()
    assert diff < 25, "the same picture"
    assert all(25 <= p <= 85 for p, _ in report.calls) and len(report.calls) >= 3


def test_enhance_does_not_add_noise_to_flat_areas():
    rng = np.random.default_rng(4)
    camera = data.camera().astype(np.float32) + rng.normal(0, 6, data.camera().shape)
    src = Image.fromarray(np.clip(camera, 0, 255).astype(np.uint8)).convert("RGB")
    out = enhance(src)
    bicubic = src.resize(out.size, Image.Resampling.BICUBIC)

    def grain(img):
        sky = np.asarray(img.convert("L"), dtype=np.float32)[20:200, 700:1000]
        return float((sky - ndi.gaussian_filter(sky, 4)).std())

    assert grain(out) < grain(bicubic)
    assert sharpness(out) > sharpness(bicubic)


def test_enhance_caps_the_output_size(monkeypatch):
    monkeypatch.setattr(enhance_module, "MAX_OUTPUT_PIXELS", 1_000_000)
    src = photo("coffee").resize((900, 600))
    out = enhance(src)
    assert out.width * out.height <= 1_000_000
    assert out.width / out.height == pytest.approx(1.5, rel=0.01)


def test_enhance_keeps_alpha():
    src = photo("chelsea").convert("RGBA")
    out = enhance(src)
    assert out.mode == "RGBA" and out.size == (src.width * 2, src.height * 2)


# colour match


BLOCKS = {"Scarlet Red": (221, 40, 38), "Royal Blue": (40, 74, 165), "Lining Black": (22, 20, 20)}


def blocks_on_white() -> tuple[Image.Image, dict[str, float]]:
    arr = np.full((400, 600, 3), 250, dtype=np.uint8)
    arr[40:140, 40:340] = BLOCKS["Scarlet Red"]
    arr[180:380, 380:560] = BLOCKS["Royal Blue"]
    arr[200:260, 40:240] = BLOCKS["Lining Black"]
    areas = {"Scarlet Red": 100 * 300, "Royal Blue": 200 * 180, "Lining Black": 60 * 200}
    total = sum(areas.values())
    return Image.fromarray(arr), {name: 100 * area / total for name, area in areas.items()}


def test_color_match_finds_known_inks():
    img, expected = blocks_on_white()
    preview, palette = match_colors(img, colors=6)
    assert {entry["name"] for entry in palette} == set(expected)
    for entry in palette:
        assert entry["coverage"] == pytest.approx(expected[entry["name"]], abs=1.0)
        assert entry["deltaE"] < 5
        assert set(entry) == {"name", "hex", "coverage", "deltaE", "sourceHex"}
    assert [e["coverage"] for e in palette] == sorted((e["coverage"] for e in palette), reverse=True)

    assert preview.size == img.size and preview.mode == "RGB"
    pixels = np.asarray(preview)
    assert (pixels[0:30, :] == 255).all(), "background stays white"
    red = next(e for e in palette if e["name"] == "Scarlet Red")["hex"]
    assert tuple(pixels[90, 190]) == tuple(int(red[i:i + 2], 16) for i in (1, 3, 5))


def test_color_match_on_a_photo():
    report = Recorder()
    preview, palette = match_colors(photo("coffee"), colors=6, report=report)
    assert all(25 <= p <= 85 for p, _ in report.calls) and len(report.calls) >= 2
    assert 2 <= len(palette) <= 6
    assert sum(e["coverage"] for e in palette) == pytest.approx(100, abs=1)
    assert len({e["name"] for e in palette}) == len(palette)
    for entry in palette:
        assert entry["hex"].startswith("#") and len(entry["hex"]) == 7
        assert entry["sourceHex"].startswith("#") and len(entry["sourceHex"]) == 7
        assert entry["deltaE"] >= 0 and round(entry["deltaE"], 2) == entry["deltaE"]
        assert round(entry["coverage"], 1) == entry["coverage"]
    assert json.dumps(palette)
    assert preview.size == (600, 400)
    again = match_colors(photo("coffee"), colors=6)[1]
    assert again == palette, "deterministic"


def test_color_match_ignores_transparent_pixels():
    img = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    img.paste((40, 74, 165, 255), (100, 100, 200, 200))
    _, palette = match_colors(img, colors=4)
    assert [e["name"] for e in palette] == ["Royal Blue"]
    assert palette[0]["coverage"] == 100.0


def test_color_match_refuses_blank_images():
    with pytest.raises(FinalError, match="no ink colours found"):
        match_colors(Image.new("RGB", (200, 200), (252, 251, 250)))


@pytest.mark.parametrize("colors", [0, 13, 2.5])
def test_color_match_rejects_bad_counts(colors):
    with pytest.raises(FinalError):
        match_colors(photo("coffee"), colors=colors)


def test_ink_palette_is_sane():
    entries, lab = inks()
    assert 30 <= len(entries) <= 60
    assert len({e["name"] for e in entries}) == len(entries)
    assert all(len(e["hex"]) == 7 and int(e["hex"][1:], 16) >= 0 for e in entries)
    assert lab.shape == (len(entries), 3)
