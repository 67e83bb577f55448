"""OpenAI and seed requests → one validated `ImageRequest` (an `ImageJob` plus how to answer).

Two steps, both before any upstream call, each violation a 400 (413 for sizes) naming the
offending `param`:
1. the body against its declaration (`schemas.py`, through `validation.py`): types, choices
   and the bounds that hold for every model;
2. what the chosen model accepts, from its `ModelSpec` (never `if model == ...`): prompt
   length, size, steps, seed, guidance, how many images, a mask, strength.

Honoured: `output_format` (png, jpeg, webp) and `output_compression` (0-100, for jpeg and
webp; see `api/output.py`), `stream` (see `api/stream.py`). With no `response_format` the
answer's form follows the model name used (`model_lookup.default_response_format`). A `mask`
goes to a model that takes masks: the one named, else `MASK_MODEL`.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, replace
from typing import Literal

from flux_proxy.api.body import RawRequest
from flux_proxy.api.fields import size_of
from flux_proxy.api.model_lookup import ResponseFormat, default_response_format, lookup_model
from flux_proxy.api.references import (
    PendingImage,
    collect_images,
    collect_mask,
    prepare_references,
)
from flux_proxy.api.schemas import (
    MAX_N,
    MAX_PARTIAL_IMAGES,
    MAX_SEED,
    ImageEditBody,
    ImageGenerationBody,
    ImageOptions,
)
from flux_proxy.api.shapes import changed_image_size, in_image_shape
from flux_proxy.api.validation import validate_body
from flux_proxy.errors import invalid
from flux_proxy.job import ImageJob, ReferenceImage
from flux_proxy.masks import convert_mask, image_size
from flux_proxy.models import MODELS, ModelSpec, find_model
from flux_proxy.settings import Settings

__all__ = ["MAX_N", "MAX_PARTIAL_IMAGES", "ImageRequest", "build_image_request"]

OutputFormat = Literal["png", "jpeg", "webp"]
_RANDOM_SEED_BOUND = 2**31  # random seeds stay small enough for every client to print


@dataclass(frozen=True)
class ImageRequest:
    """A validated request: what to make (`job`, `n` times) and how to answer."""

    job: ImageJob  # seed unset; see `jobs()`
    n: int
    seeds: tuple[int | None, ...]  # one per image
    response_format: ResponseFormat | None  # None: both b64_json and url
    prompt_text: str  # what was sent upstream, for `revised_prompt`
    stream: bool = False
    partial_images: int = 0  # accepted; no served model makes partial images
    output_format: OutputFormat | None = None  # None: whatever the model answered, untouched
    output_compression: int | None = None  # 0-100, jpeg and webp only
    quality: str = "auto"  # echoed; no served model has a quality knob
    background: str = "auto"  # auto | opaque
    requested_seed: int | None = None  # the caller's `seed`; None: random seeds (see `seeds`)
    model_name: str | None = None  # the `model` the caller sent, as sent (None: none)

    def jobs(self) -> list[ImageJob]:
        return [replace(self.job, seed=seed) for seed in self.seeds]


async def build_image_request(raw: RawRequest, settings: Settings, *, edit: bool) -> ImageRequest:
    """Validate a decoded body. References are checked and scaled in worker threads."""
    body = validate_body(ImageEditBody if edit else ImageGenerationBody, raw.fields)
    model = resolve_model(body.model, settings)
    return await assemble(body, raw, settings, model=model, prompt=body.prompt, edit=edit)


def resolve_model(name: str | None, settings: Settings) -> ModelSpec:
    if name is None or not name.strip():
        name = settings.default_model
    spec = lookup_model(name, settings)
    if spec is None:
        served = ", ".join(m.short_name for m in MODELS)
        raise invalid(
            f"unknown model {name[:100]!r}; this proxy serves: {served}",
            param="model",
            code="model_not_found",
        )
    return spec


async def assemble(
    body: ImageOptions,
    raw: RawRequest,
    settings: Settings,
    *,
    model: ModelSpec,
    prompt: str,
    edit: bool,
) -> ImageRequest:
    """A validated body and its images → the request, checked against what `model` takes
    (or, for an edit with a mask, against the model that will do it)."""
    mask = collect_mask(raw, settings)
    if mask is not None:
        model = _mask_model(model, settings)
    _check_prompt(prompt, model, settings)
    if body.output_format == "png" and body.output_compression is not None:
        raise invalid(
            "output_compression applies to jpeg and webp only; PNG is lossless",
            param="output_compression",
        )
    width, height = _size(body, model)
    steps = _steps(body.steps, model)
    _check_takes(model, body, settings)

    pending = collect_images(raw, settings)
    if edit and not pending:
        raise invalid(
            "an image to edit is required (form field 'image' or 'image[]')",
            param="image",
            code="missing_required_parameter",
        )
    if mask is not None and not pending:
        raise invalid("a mask needs the image it applies to", param="image")
    if model.requires_reference and not pending:
        raise invalid(
            f"{model.short_name} changes an image: send one (images, or image in an edit)",
            param="image",
            code="missing_required_parameter",
        )
    if model.requires_mask and mask is None:
        raise invalid(
            f"{model.short_name} repaints where a mask says: send one with the image",
            param="mask",
            code="missing_required_parameter",
        )
    _check_image_count(pending, model)
    references = await prepare_references(pending, model)
    job_mask = await _prepared_mask(mask, pending, references) if mask is not None else None
    if references and _no_size_asked(body):
        # An image given and no size asked: make the image's shape (see `shapes.py`).
        if model.takes_mask:
            width, height = changed_image_size(model, references[0].width, references[0].height)
        elif edit and (shaped := in_image_shape(model, pending[0].data)) is not None:
            width, height = shaped

    job = ImageJob(
        model=model,
        prompt=prompt,
        width=width,
        height=height,
        steps=steps,
        guidance=body.guidance,
        negative_prompt=body.negative_prompt,
        references=references,
        mask=job_mask,
        strength=body.strength,
    )
    response_format = body.response_format or default_response_format(body.model, settings)
    return ImageRequest(
        job=job,
        n=body.n,
        seeds=_seeds(body.seed, body.n, model),
        response_format=response_format,
        prompt_text=prompt,
        stream=body.stream,
        partial_images=body.partial_images,
        output_format=body.output_format,  # type: ignore[arg-type]  # jpg is stored as jpeg
        output_compression=body.output_compression,
        quality=body.quality,
        background=body.background,
        model_name=body.model,
        requested_seed=body.seed if model.takes_seed else None,
    )


# --- what the model takes --------------------------------------------------------------------


def _check_prompt(text: str, model: ModelSpec, settings: Settings) -> None:
    limit = min(settings.max_prompt_chars, model.prompt_max_chars)
    if len(text) > limit:
        raise invalid(
            f"prompt is {len(text)} characters; {model.short_name} takes at most {limit}",
            param="prompt",
            code="string_above_max_length",
        )


def _check_takes(model: ModelSpec, body: ImageOptions, settings: Settings) -> None:
    """Knobs the model has no use for are refused, never silently dropped."""
    if body.seed is not None and not model.takes_seed:
        raise invalid(f"{model.short_name} takes no seed", param="seed")
    if body.guidance is not None:
        bounds = model.guidance_range
        if bounds is None:
            raise invalid(f"{model.short_name} takes no guidance", param="guidance")
        if body.guidance not in bounds:
            raise invalid(
                f"guidance must be between {bounds.minimum} and {bounds.maximum} for "
                f"{model.short_name}",
                param="guidance",
            )
    if body.strength is not None:
        bounds = model.strength_range
        if bounds is None:
            raise invalid(
                f"{model.short_name} takes no strength (image-to-image models only)",
                param="strength",
            )
        if body.strength not in bounds:
            raise invalid(
                f"strength must be between {bounds.minimum} and {bounds.maximum} for "
                f"{model.short_name}",
                param="strength",
            )
    if body.negative_prompt is not None:
        if not model.takes_negative_prompt:
            raise invalid(f"{model.short_name} takes no negative_prompt", param="negative_prompt")
        if len(body.negative_prompt) > settings.max_prompt_chars:
            raise invalid("negative_prompt is too long", param="negative_prompt")


def _size(body: ImageOptions, model: ModelSpec) -> tuple[int | None, int | None]:
    """Width and height: `width`/`height` win over `size`; `auto` or nothing = model default."""
    width = height = None
    width_param = height_param = "size"
    if (dimensions := size_of(body.size)) is not None:
        width, height = dimensions
    if body.width is not None:
        width, width_param = body.width, "width"
    if body.height is not None:
        height, height_param = body.height, "height"

    if model.size_range is None:
        # A fixed-size model takes its own size (LangChain always sends 1024x1024) and is
        # sent no size at all; any other size is refused, saying which one it makes.
        own = (model.default_width, model.default_height)
        for value, param, index in ((width, width_param, 0), (height, height_param, 1)):
            if value is not None and value != own[index]:
                raise invalid(
                    f"{model.short_name} makes only {own[0]}x{own[1]} images; leave out "
                    f"{param} or ask for {own[0]}x{own[1]}",
                    param=param,
                )
        return None, None
    bounds = model.size_range
    for value, param, name in ((width, width_param, "width"), (height, height_param, "height")):
        if value is not None and value not in bounds:
            raise invalid(
                f"{name} must be between {bounds.minimum} and {bounds.maximum} for "
                f"{model.short_name}; got {value}",
                param=param,
            )
    return (
        width if width is not None else model.default_width,
        height if height is not None else model.default_height,
    )


def _no_size_asked(body: ImageOptions) -> bool:
    return size_of(body.size) is None and body.width is None and body.height is None


def _steps(steps: int | None, model: ModelSpec) -> int | None:
    if steps is None:
        return model.default_steps if model.takes_steps else None
    if model.fixed_steps is not None:
        if steps != model.fixed_steps:
            raise invalid(
                f"{model.short_name} always runs {model.fixed_steps} steps; leave out steps",
                param="steps",
            )
        return None
    if model.steps_range is None:
        raise invalid(f"{model.short_name} takes no steps", param="steps")
    if steps not in model.steps_range:
        raise invalid(
            f"steps must be between {model.steps_range.minimum} and "
            f"{model.steps_range.maximum} for {model.short_name}; got {steps}",
            param="steps",
        )
    return steps


def _seeds(seed: int | None, n: int, model: ModelSpec) -> tuple[int | None, ...]:
    """One seed per image: seed, seed+1, ... when given, else random (so images differ)."""
    if not model.takes_seed:
        return (None,) * n
    if seed is None:
        return tuple(secrets.randbelow(_RANDOM_SEED_BOUND) for _ in range(n))
    return tuple(min(seed + i, MAX_SEED) for i in range(n))


def _check_image_count(pending: list[PendingImage], model: ModelSpec) -> None:
    if pending and not model.takes_references:
        raise invalid(f"{model.short_name} takes no reference images", param=pending[0].param)
    if len(pending) > model.max_references:
        raise invalid(
            f"{model.short_name} takes at most {model.max_references} images; got {len(pending)}",
            param=pending[model.max_references].param,
        )


# --- masks --------------------------------------------------------------------------------


def _mask_model(named: ModelSpec, settings: Settings) -> ModelSpec:
    """The model that does an edit with a mask: the named one if it takes masks, else
    MASK_MODEL (and the response's `model` says so)."""
    if named.takes_mask:
        return named
    fallback = find_model(settings.mask_model) if settings.mask_model.strip() else None
    if fallback is None or not fallback.takes_mask:
        hint = (
            "; MASK_MODEL is not set"
            if not settings.mask_model.strip()
            else f"; MASK_MODEL {settings.mask_model[:100]!r} is not a served model that takes one"
        )
        raise invalid(
            f"{named.short_name} does not take a mask{hint}. Describe the edit in the prompt "
            "and pass the image as a reference",
            param="mask",
            code="unsupported_parameter",
        )
    return fallback


async def _prepared_mask(
    mask: PendingImage, pending: list[PendingImage], references: tuple[ReferenceImage, ...]
) -> ReferenceImage:
    first = references[0]
    return await asyncio.to_thread(
        _convert, mask.data, pending[0].data, (first.width, first.height)
    )


def _convert(mask: bytes, image: bytes, target: tuple[int, int]) -> ReferenceImage:
    return convert_mask(mask, image_size=image_size(image), target=target)
