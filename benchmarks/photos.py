"""Photo-like test images of a chosen size in bytes, from Pillow and `random` alone.

A smooth gradient with fine noise over it behaves like a detailed photo for every codec:
it neither compresses to nothing (like a flat colour) nor is pure noise. The size in bytes is
hit by measuring bytes per pixel on a small trial image and scaling the sides to match.
"""

from __future__ import annotations

import io
import math
import random

from PIL import Image

_SAVE = {"JPEG": {"quality": 92}, "PNG": {"compress_level": 6}}
_NOISE_SHARE = {"JPEG": 0.35, "PNG": 0.12}


def _render(width: int, height: int, fmt: str, seed: int) -> bytes:
    rng = random.Random(seed)
    size = (width, height)
    base = Image.merge(
        "RGB",
        [
            Image.linear_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
            Image.new("L", size, rng.randrange(256)),
        ],
    )
    noise = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    out = io.BytesIO()
    Image.blend(base, noise, _NOISE_SHARE[fmt]).save(out, format=fmt, **_SAVE[fmt])
    return out.getvalue()


def photo(target_bytes: int, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A 4:3 photo-like image of about `target_bytes` (within a few percent)."""
    trial = _render(400, 300, fmt, seed)
    per_pixel = len(trial) / (400 * 300)
    pixels = target_bytes / per_pixel
    width = int(math.sqrt(pixels * 4 / 3))
    return _render(width, width * 3 // 4, fmt, seed)


def reference_set(target_bytes: int = 4 * 1024 * 1024) -> list[tuple[str, bytes, str]]:
    """Four references as (filename, bytes, mime): two JPEGs and two PNGs, like a phone's
    camera roll plus screenshots."""
    kinds = [("JPEG", "jpg", "image/jpeg"), ("PNG", "png", "image/png")] * 2
    return [
        (f"photo_{index}.{extension}", photo(target_bytes, fmt, seed=index), mime)
        for index, (fmt, extension, mime) in enumerate(kinds)
    ]
