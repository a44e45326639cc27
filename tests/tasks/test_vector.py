"""Stencils as SVG (`format: "svg"`): the real workers trace them; the SVG, rasterised by resvg,
draws the same ink as the PNG."""
from __future__ import annotations

import io
import re

import numpy as np
import requests
from PIL import Image

from tasks.vector import rasterize
from tests import fakegemini as fg
from tests.conftest import photo


def ink_iou(png: bytes, svg: str) -> float:
    """Intersection over union of the ink (darker than mid-grey) of the PNG and of the rendered SVG."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("L")) < 128
    drawn = rasterize(svg)
    assert drawn.size == (a.shape[1], a.shape[0])
    b = np.asarray(drawn) < 128
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_svg_stencil_matches_its_png(api, workers):
    job_id = api.submit(photo((640, 480)), engine="local", format="svg").json()["jobId"]
    status = api.wait(job_id)
    assert status["status"] == "completed", status
    result = status["result"]
    assert result["svg"].startswith("http") and result["svg"] != result["image"] and "svgKey" not in result
    svg = requests.get(result["svg"], timeout=30)
    assert svg.status_code == 200 and svg.headers["Content-Type"].startswith("image/svg+xml")
    assert "sandbox" in svg.headers["Content-Security-Policy"] and svg.headers["X-Content-Type-Options"] == "nosniff"
    text = svg.text
    paths = " ".join(re.findall(r'\sd="([^"]*)"', text))
    assert len(re.findall(r"[Mm]", paths)) > 10 and "<script" not in text  # many closed outlines
    png = requests.get(result["image"], timeout=30).content
    iou = ink_iou(png, text)
    print(f"svg vs png ink IoU {iou:.3f}, {len(text) // 1024} KB")
    assert iou >= 0.8, iou
    tampered = result["svg"][:-3] + ("AAA" if not result["svg"].endswith("AAA") else "BBB")
    assert requests.get(tampered, timeout=30).status_code == 404


def test_png_is_the_default_and_svg_is_only_for_stencils(api, workers):
    plain = api.wait(api.submit(photo((128, 128)), engine="local").json()["jobId"])
    assert "svg" not in plain["result"]
    refused = api.submit(photo((128, 128)), operation="color-match", format="svg")
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_request"
    assert api.submit(photo((128, 128)), format="eps").status_code == 400


def test_a_provider_stencil_is_traced_too(make_api, workers, fake_gemini):
    api = make_api(GEMINI_API_KEY="test-key")
    fake_gemini.push(fg.ok(fg.sample_png(256)))
    status = api.wait(api.submit(photo((128, 128)), engine="gemini", format="svg").json()["jobId"])
    assert status["status"] == "completed" and status["result"]["engine"] == "gemini", status
    text = requests.get(status["result"]["svg"], timeout=30).text
    assert text.startswith("<?xml") and "<path" in text and 'width="256" height="256"' in text
