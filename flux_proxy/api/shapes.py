"""The size to make when the caller names none but gives an image: the image's own shape.

OpenAI's edits default to `auto` (GPT image models: the input's orientation) and its variations
to 1024x1024 (of the square images DALL·E 2 takes). A model's own default size (FLUX.2 makes
1024x768) would turn a portrait photo's edit landscape and a square logo's variation 4:3.
"""

from __future__ import annotations

from flux_proxy.masks import image_size
from flux_proxy.models import ModelSpec

LONGER_SIDE = 1024  # OpenAI's 1024x1024 default, kept on the longer side


def in_image_shape(model: ModelSpec, image: bytes) -> tuple[int, int] | None:
    """1024 on the longer side in the image's shape, each side a multiple of 16, within the
    model's range. None (the model's default) for a fixed-size model or an unreadable image,
    which the reference checks then refuse with their own message."""
    if model.size_range is None:
        return None
    try:
        width, height = image_size(image)
    except Exception:  # not an image: prepare_references refuses it, naming the param
        return None
    return _scaled(model, width, height, LONGER_SIDE / max(width, height), 16)


def changed_image_size(model: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """When an SD model changes the image it is given (img2img, inpainting; its `image` is
    the one to change): that image's own size, so the mask stays over what it marks, scaled
    into the model's range only if needed, each side a multiple of 8 (SD's latent grid)."""
    if model.size_range is None:
        return model.default_width or width, model.default_height or height
    low, high = model.size_range.minimum, model.size_range.maximum
    scale = 1.0
    if min(width, height) < low:
        scale = low / min(width, height)
    if max(width, height) * scale > high:
        scale = high / max(width, height)
    return _scaled(model, width, height, scale, 8)


def _scaled(
    model: ModelSpec, width: int, height: int, scale: float, multiple: int
) -> tuple[int, int]:
    assert model.size_range is not None
    low, high = model.size_range.minimum, model.size_range.maximum

    def side(value: int) -> int:
        return min(high, max(low, max(1, round(value * scale / multiple)) * multiple))

    return side(width), side(height)
