"""The image an MCP answer carries: small enough for hosts.

MCP hosts handle tool answers under about 1 MB well, and the SDK's HTTP client refuses SSE
events over 1 MiB. An image whose base64 fits its share of `MCP_IMAGE_MAX_BYTES` goes as it
is; a larger one is re-encoded as a preview (JPEG by default, `MCP_IMAGE_FORMAT`) until it
fits: lower quality first, then smaller. The full-size original stays in the image store,
linked from the answer's text.

Synchronous and CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

MIMES = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}
_QUALITIES = (85, 72, 60, 45)  # tried in order at each size, for JPEG and WebP
_SCALE_STEP = 0.75  # each further try is this much smaller per side
_SMALLEST_SIDE = 64  # below this a preview shows nothing useful: give the smallest made


@dataclass(frozen=True)
class Preview:
    data: bytes
    mime: str
    width: int
    height: int
    original: bool = False  # the image itself, untouched

    @property
    def base64_size(self) -> int:
        return base64_length(len(self.data))


def base64_length(size: int) -> int:
    return 4 * math.ceil(size / 3)


def make_preview(data: bytes, mime: str, fmt: str, max_base64_bytes: int) -> Preview:
    """`data` (an image of type `mime`) untouched if its base64 fits `max_base64_bytes`, else
    re-encoded as `fmt` (jpeg | webp | png) to fit, where a preview of at least 64 pixels a
    side can."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        original = _displayable(opened, fmt)
    width, height = original.size
    if mime in MIMES.values() and base64_length(len(data)) <= max_base64_bytes:
        return Preview(data, mime, width, height, original=True)  # small enough as it is
    smallest: Preview | None = None
    scale = 1.0
    while True:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = original if scale == 1.0 else original.resize(size, Image.Resampling.LANCZOS)
        for quality in (None,) if fmt == "png" else _QUALITIES:
            candidate = Preview(_encode(image, fmt, quality), MIMES[fmt], *size)
            if candidate.base64_size <= max_base64_bytes:
                return candidate
            if smallest is None or candidate.base64_size < smallest.base64_size:
                smallest = candidate
        scale *= _SCALE_STEP
        if min(width, height) * scale < _SMALLEST_SIDE:
            return smallest


def _displayable(image: Image.Image, fmt: str) -> Image.Image:
    """JPEG has no alpha: a transparent image is laid on white. Odd modes become RGB(A)."""
    if fmt == "jpeg" and image.mode not in ("RGB", "L"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image.copy()


def _encode(image: Image.Image, fmt: str, quality: int | None) -> bytes:
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, format="PNG", compress_level=6)
    elif fmt == "webp":
        image.save(out, format="WEBP", quality=quality, method=4)
    else:
        image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()
