"""The MCP answer's image: the original when it fits its share of MCP_IMAGE_MAX_BYTES, else a
JPEG/WebP (or scaled PNG) preview that does, made by Pillow from real images."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from flux_proxy.mcp.preview import make_preview


def noisy_png(width: int, height: int) -> bytes:
    # Random pixels compress worst: the hardest case for staying under a budget.
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_an_image_that_fits_goes_untouched():
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(out, format="PNG")
    preview = make_preview(out.getvalue(), "image/png", "jpeg", 100_000)
    assert preview.original and preview.data == out.getvalue() and preview.mime == "image/png"


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_a_large_image_becomes_a_preview_within_the_budget(fmt):
    data = noisy_png(1024, 768)
    budget = 120_000
    preview = make_preview(data, "image/png", fmt, budget)
    assert not preview.original
    assert preview.base64_size <= budget
    decoded = Image.open(io.BytesIO(preview.data))
    assert decoded.format == fmt.upper() and decoded.size == (preview.width, preview.height)
    assert preview.width / preview.height == pytest.approx(1024 / 768, rel=0.02)


def test_transparent_images_are_laid_on_white_for_jpeg():
    colours = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))
    invisible = Image.merge("RGBA", (*colours.split(), Image.new("L", (400, 400), 0)))
    out = io.BytesIO()
    invisible.save(out, format="PNG")
    preview = make_preview(out.getvalue(), "image/png", "jpeg", 30_000)
    decoded = Image.open(io.BytesIO(preview.data)).convert("RGB")
    assert not preview.original and preview.mime == "image/jpeg"
    assert min(decoded.getpixel((200, 200))) >= 250  # white, give or take JPEG
