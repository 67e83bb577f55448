"""Judging a call the way Workers AI does, from the model table alone.

Everything model-specific (body format, which fields exist, their names and ranges, how many
input images) comes from `ModelSpec`; adding a model to `flux_proxy/models.py` teaches the
emulator about it with no change here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from PIL import Image

from flux_proxy.emulator.body import JSON_BASE64, JSON_BYTE_ARRAYS, CallBody
from flux_proxy.emulator.envelope import CloudflareError, bad_input
from flux_proxy.models import FloatRange, IntRange, ModelSpec

_IMAGE_FIELD = re.compile(r"^input_image_(\d+)$")
_INTEGER_TEXT = re.compile(r"^[+-]?\d+$")
# Images up to this many pixels are decoded fully (to catch truncated files); bigger ones are
# judged by their header, since they are rejected for their size anyway.
_FULL_DECODE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str | None  # Pillow's name: PNG, JPEG, WEBP, ...


@dataclass(frozen=True)
class RunParams:
    """A valid call, in the terms the renderer and the price need."""

    prompt: str
    width: int
    height: int
    steps: int  # the steps the model runs (and bills), settable or fixed
    seed: int | None
    references: tuple[tuple[int, int], ...]  # (width, height) of each input image, in order
    # img2img / inpainting (JSON bodies): the image to change and where (white = repaint)
    image: bytes | None = None
    mask: bytes | None = None
    strength: float | None = None


def inspect_image(data: bytes) -> ImageInfo | None:
    """Width, height and format of an uploaded image; None when it does not decode."""
    try:
        with Image.open(BytesIO(data)) as img:
            width, height = img.size
            if width * height <= _FULL_DECODE_PIXELS:
                img.load()
            return ImageInfo(width, height, img.format)
    except Exception:  # any decoder failure means "unable to decode", as upstream says
        return None


def allowed_fields(spec: ModelSpec) -> set[str]:
    fields = {"prompt"}
    if spec.takes_size:
        fields |= {"width", "height"}
    if spec.steps_field and spec.takes_steps:
        fields.add(spec.steps_field)
        fields |= set(spec.steps_aliases)
    if spec.body == "json" and spec.takes_references:
        fields |= {"image", JSON_BASE64}
    if spec.body == "json" and spec.takes_mask:
        fields.add("mask")
    if spec.takes_strength:
        fields.add("strength")
    if spec.guidance_range is not None:
        fields.add("guidance")
    if spec.takes_seed:
        fields.add("seed")
    if spec.takes_negative_prompt:
        fields.add("negative_prompt")
    return fields


def validate(spec: ModelSpec, body: CallBody, images: dict[str, ImageInfo | None]) -> RunParams:
    """Return the call's parameters or raise the `CloudflareError` Workers AI would answer."""
    _check_form(spec, body)
    names = set(body.fields) | (set(body.files) if body.form == "json" else set())
    unknown = sorted(names - allowed_fields(spec))
    if unknown:
        raise bad_input(f"additional properties are not allowed: {', '.join(unknown)}")
    prompt = _prompt(spec, body.fields.get("prompt"))
    width = height = None
    if spec.size_range is not None:
        width = _integer(body.fields, "width", spec.size_range)
        height = _integer(body.fields, "height", spec.size_range)
    steps = None
    if spec.steps_field and spec.steps_range is not None:
        for name in (spec.steps_field, *spec.steps_aliases):
            value = _integer(body.fields, name, spec.steps_range)
            steps = value if steps is None else steps
    if spec.guidance_range is not None:
        _number(body.fields, "guidance", spec.guidance_range)
    strength = None
    if spec.strength_range is not None:
        strength = _number(body.fields, "strength", spec.strength_range)
    seed = _integer(body.fields, "seed", IntRange(0, 2**64 - 1)) if spec.takes_seed else None
    if "negative_prompt" in body.fields and not isinstance(body.fields["negative_prompt"], str):
        raise bad_input("negative_prompt must be a string")
    if spec.body == "json":
        image, mask, references = _json_images(spec, body, images)
    else:
        image, mask, references = None, None, _references(spec, body, images)
    return RunParams(
        prompt=prompt,
        width=width or spec.default_width or 1024,
        height=height or spec.default_height or 1024,
        steps=spec.effective_steps(steps),
        seed=seed,
        references=references,
        image=image,
        mask=mask,
        strength=strength,
    )


def _json_images(
    spec: ModelSpec, body: CallBody, images: dict[str, ImageInfo | None]
) -> tuple[bytes | None, bytes | None, tuple[tuple[int, int], ...]]:
    """The image to change and its mask, checked the way the catalogue's schema reads."""
    for name in (*JSON_BYTE_ARRAYS, JSON_BASE64):
        if name in body.fields:  # still here: body.py could not read it as an image
            kind = "a base64 string" if name == JSON_BASE64 else "an array of integers 0-255"
            raise bad_input(f"{name} must be {kind}")
    files = body.files
    source = "image" if "image" in files else JSON_BASE64 if JSON_BASE64 in files else None
    if source is None:
        if spec.requires_reference:
            raise bad_input(f"{spec.id} needs the image to change: send image or image_b64")
        if "mask" in files:
            raise bad_input("mask needs an image to apply to: send image or image_b64")
        return None, None, ()
    info = images.get(source)
    if info is None:
        raise CloudflareError(400, 3030, "Invalid input image: unable to decode image file")
    if "mask" not in files:
        if spec.requires_mask:
            raise bad_input(f"{spec.id} needs a mask: white where the image is repainted")
        return files[source].data, None, ((info.width, info.height),)
    mask_info = images.get("mask")
    if mask_info is None:
        raise CloudflareError(400, 3030, "Invalid input mask: unable to decode image file")
    if (mask_info.width, mask_info.height) != (info.width, info.height):
        raise bad_input(
            f"mask must be the size of the image ({info.width}x{info.height}), "
            f"got {mask_info.width}x{mask_info.height}"
        )
    return files[source].data, files["mask"].data, ((info.width, info.height),)


def _check_form(spec: ModelSpec, body: CallBody) -> None:
    if spec.body == "multipart" and body.form != "multipart":
        raise bad_input(f"{spec.id} takes multipart/form-data, even for a prompt alone")
    if spec.body == "json" and body.form == "multipart":
        raise bad_input(f"{spec.id} takes a JSON body, not multipart/form-data")
    if body.form == "invalid" or body.problem:
        raise CloudflareError(400, 5004, f"Invalid data: {body.problem}")


def _prompt(spec: ModelSpec, value: Any) -> str:
    if value is None:
        raise bad_input("must have required property 'prompt'")
    if not isinstance(value, str):
        raise bad_input("prompt must be a string")
    if not 1 <= len(value) <= spec.prompt_max_chars:
        raise bad_input(
            f"prompt must be between 1 and {spec.prompt_max_chars} characters, got {len(value)}"
        )
    return value


def _integer(fields: dict[str, Any], name: str, allowed: IntRange) -> int | None:
    if name not in fields:
        return None
    value = fields[name]
    if isinstance(value, str) and _INTEGER_TEXT.match(value.strip()):
        value = int(value.strip())  # multipart sends every field as text
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_input(f"{name} must be an integer")
    if value not in allowed:
        raise bad_input(f"{name} must be between {allowed.minimum} and {allowed.maximum}")
    return value


def _number(fields: dict[str, Any], name: str, allowed: FloatRange) -> float | None:
    if name not in fields:
        return None
    value = fields[name]
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise bad_input(f"{name} must be a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_input(f"{name} must be a number")
    if value not in allowed:
        raise bad_input(f"{name} must be between {allowed.minimum:g} and {allowed.maximum:g}")
    return float(value)


def _references(
    spec: ModelSpec, body: CallBody, images: dict[str, ImageInfo | None]
) -> tuple[tuple[int, int], ...]:
    numbered: list[tuple[int, str]] = []
    for name in body.files:
        match = _IMAGE_FIELD.match(name)
        if match is None or int(match.group(1)) >= spec.max_references:
            if not spec.takes_references:
                raise bad_input(f"{spec.id} takes no input images ({name})")
            raise bad_input(
                f"unexpected file {name}: input images are input_image_0 .. "
                f"input_image_{spec.max_references - 1}"
            )
        numbered.append((int(match.group(1)), name))
    sizes = []
    limit = spec.max_reference_side
    for index, name in sorted(numbered):
        info = images.get(name)
        if info is None:
            raise CloudflareError(
                400, 3030, f"Invalid input image[{index}]: unable to decode image file"
            )
        if info.width > limit or info.height > limit:
            raise bad_input(
                f"{name} must be smaller than {limit + 1}x{limit + 1}, "
                f"got {info.width}x{info.height}"
            )
        sizes.append((info.width, info.height))
    return tuple(sizes)
