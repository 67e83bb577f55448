"""OpenAI and seed requests → one validated `ImageRequest` (an `ImageJob` plus how to answer).

Every rule is checked here, before any upstream call, and each violation is a 400 (413 for
sizes) naming the offending `param`. What a model accepts comes from its `ModelSpec`, never
from `if model == ...`.

Honoured: `output_format` (png, jpeg, webp) and `output_compression` (0-100, for jpeg and
webp; see `api/output.py`), `stream` (see `api/stream.py`). Accepted and ignored
(documented): `quality`, `style`, `user`, `moderation`, and `partial_images` (0-3; FLUX.2 and
the other Workers AI models make no partial images, so a stream carries only the completed
events). `background` may be `auto` or `opaque`; `transparent` is refused, since no served model
can make a transparent image.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from flux_proxy.api.body import RawRequest
from flux_proxy.api.model_lookup import lookup_model
from flux_proxy.api.references import collect_images, prepare_references
from flux_proxy.errors import invalid
from flux_proxy.job import ImageJob
from flux_proxy.models import MODELS, ModelSpec
from flux_proxy.settings import Settings

ResponseFormat = Literal["b64_json", "url"]
OutputFormat = Literal["png", "jpeg", "webp"]
MAX_N = 10
MAX_PARTIAL_IMAGES = 3  # OpenAI's range is 0-3
_OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
_QUALITIES = ("auto", "low", "medium", "high", "standard", "hd")
MAX_SEED = 2**63 - 1
_RANDOM_SEED_BOUND = 2**31  # random seeds stay small enough for every client to print
_SIZE = re.compile(r"^\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*$")
_INTEGER_TEXT = re.compile(r"^\s*[+-]?\d{1,20}\s*$")


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

    def jobs(self) -> list[ImageJob]:
        return [replace(self.job, seed=seed) for seed in self.seeds]


async def build_image_request(raw: RawRequest, settings: Settings, *, edit: bool) -> ImageRequest:
    """Validate a decoded body. References are checked and scaled in worker threads."""
    fields = raw.fields
    model = _model(fields.get("model"), settings)
    prompt_text = _prompt(fields.get("prompt"), model, settings)
    n = _n(fields.get("n"))
    response_format = _response_format(fields.get("response_format"))
    stream = _bool(fields.get("stream"), "stream")
    partial_images = _partial_images(fields.get("partial_images"))
    output_format = _output_format(fields.get("output_format"))
    output_compression = _output_compression(fields.get("output_compression"), output_format)
    quality = _quality(fields.get("quality"))
    background = _background(fields.get("background"))
    if "mask" in fields or any(f.field == "mask" for f in raw.files):
        raise invalid(
            f"{model.short_name} does not take a mask; describe the edit in the prompt and pass "
            "the image as a reference",
            param="mask",
            code="unsupported_parameter",
        )
    width, height = _size(fields, model)
    steps = _steps(fields.get("steps"), model)
    seed = _seed(fields.get("seed"), model)
    guidance = _guidance(fields.get("guidance"), model)
    negative_prompt = _negative_prompt(fields.get("negative_prompt"), model, settings)

    pending = collect_images(raw, settings)
    if edit and not pending:
        raise invalid(
            "an image to edit is required (form field 'image' or 'image[]')",
            param="image",
            code="missing_required_parameter",
        )
    if pending and not model.takes_references:
        raise invalid(f"{model.short_name} takes no reference images", param=pending[0].param)
    if len(pending) > model.max_references:
        raise invalid(
            f"{model.short_name} takes at most {model.max_references} reference images; "
            f"got {len(pending)}",
            param=pending[model.max_references].param,
        )
    references = await prepare_references(pending, model)

    job = ImageJob(
        model=model,
        prompt=prompt_text,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        negative_prompt=negative_prompt,
        references=references,
    )
    return ImageRequest(
        job=job,
        n=n,
        seeds=_seeds(seed, n, model),
        response_format=response_format,
        prompt_text=prompt_text,
        stream=stream,
        partial_images=partial_images,
        output_format=output_format,
        output_compression=output_compression,
        quality=quality,
        background=background,
        requested_seed=seed if model.takes_seed else None,
    )


# --- model and prompt -------------------------------------------------------------------------


def _model(value: Any, settings: Settings) -> ModelSpec:
    if value is None or (isinstance(value, str) and not value.strip()):
        value = settings.default_model
    if not isinstance(value, str):
        raise invalid("model must be a string", param="model")
    spec = lookup_model(value, settings)
    if spec is None:
        served = ", ".join(m.short_name for m in MODELS)
        raise invalid(
            f"unknown model {value[:100]!r}; this proxy serves: {served}",
            param="model",
            code="model_not_found",
        )
    return spec


def _prompt(value: Any, model: ModelSpec, settings: Settings) -> str:
    if value is None:
        raise invalid("prompt is required", param="prompt", code="missing_required_parameter")
    if isinstance(value, dict):
        # Seed compatibility: a JSON prompt goes upstream as its (compact) JSON text.
        text = orjson.dumps(value).decode("utf-8")
    elif isinstance(value, str):
        text = value
    else:
        raise invalid("prompt must be a string or a JSON object", param="prompt")
    if not text.strip():
        raise invalid("prompt must not be empty", param="prompt")
    limit = min(settings.max_prompt_chars, model.prompt_max_chars)
    if len(text) > limit:
        raise invalid(
            f"prompt is {len(text)} characters; {model.short_name} takes at most {limit}",
            param="prompt",
            code="string_above_max_length",
        )
    return text


# --- plain values -----------------------------------------------------------------------------


def _int(value: Any, param: str) -> int:
    """An integer, or text of one (form fields are text). Never a bool, never a float."""
    if isinstance(value, bool):
        raise invalid(f"{param} must be an integer, not a boolean", param=param)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER_TEXT.match(value):
        return int(value)
    raise invalid(f"{param} must be an integer", param=param)


def _number(value: Any, param: str) -> float:
    if isinstance(value, bool):
        raise invalid(f"{param} must be a number, not a boolean", param=param)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise invalid(f"{param} must be a number", param=param) from None
    else:
        raise invalid(f"{param} must be a number", param=param)
    if not math.isfinite(number):
        raise invalid(f"{param} must be a finite number", param=param)
    return number


def _bool(value: Any, param: str) -> bool:
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", ""):
        return value.strip().lower() in ("true", "1")
    raise invalid(f"{param} must be true or false", param=param)


def _n(value: Any) -> int:
    if value is None:
        return 1
    n = _int(value, "n")
    if not 1 <= n <= MAX_N:
        raise invalid(f"n must be between 1 and {MAX_N}", param="n")
    return n


def _response_format(value: Any) -> ResponseFormat | None:
    if value is None or value == "":
        return None
    if value in ("b64_json", "url"):
        return value
    raise invalid("response_format must be 'b64_json' or 'url'", param="response_format")


def _partial_images(value: Any) -> int:
    if value is None or value == "":
        return 0
    count = _int(value, "partial_images")
    if not 0 <= count <= MAX_PARTIAL_IMAGES:
        raise invalid(
            f"partial_images must be between 0 and {MAX_PARTIAL_IMAGES}", param="partial_images"
        )
    return count


def _output_format(value: Any) -> OutputFormat | None:
    if value is None or value == "":
        return None
    name = _OUTPUT_FORMATS.get(value.strip().lower()) if isinstance(value, str) else None
    if name is None:
        raise invalid("output_format must be 'png', 'jpeg' or 'webp'", param="output_format")
    return name  # type: ignore[return-value]


def _output_compression(value: Any, output_format: OutputFormat | None) -> int | None:
    if value is None or value == "":
        return None
    compression = _int(value, "output_compression")
    if not 0 <= compression <= 100:
        raise invalid("output_compression must be between 0 and 100", param="output_compression")
    if output_format == "png":
        raise invalid(
            "output_compression applies to jpeg and webp only; PNG is lossless",
            param="output_compression",
        )
    return compression


def _quality(value: Any) -> str:
    if value is None or value == "":
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in _QUALITIES:
        raise invalid(f"quality must be one of {', '.join(_QUALITIES)}", param="quality")
    return value.strip().lower()


def _background(value: Any) -> str:
    if value is None or value == "":
        return "auto"
    if value in ("auto", "opaque"):
        return value
    if value == "transparent":
        raise invalid(
            "no served model can make a transparent background; use 'auto' or 'opaque'",
            param="background",
            code="unsupported_parameter",
        )
    raise invalid("background must be 'auto' or 'opaque'", param="background")


# --- size, steps, seed, guidance ----------------------------------------------------------------


def _size(fields: dict[str, Any], model: ModelSpec) -> tuple[int | None, int | None]:
    """Width and height: `width`/`height` win over `size`; `auto` or nothing = model default."""
    width = height = None
    width_param = height_param = "size"
    size = fields.get("size")
    if size is not None and size != "auto":
        if not isinstance(size, str) or not (match := _SIZE.match(size)):
            raise invalid("size must be 'auto' or 'WIDTHxHEIGHT', e.g. '1024x768'", param="size")
        width, height = int(match.group(1)), int(match.group(2))
    if fields.get("width") is not None:
        width, width_param = _int(fields["width"], "width"), "width"
    if fields.get("height") is not None:
        height, height_param = _int(fields["height"], "height"), "height"

    if model.size_range is None:
        if width is not None or height is not None:
            param = width_param if width is not None else height_param
            raise invalid(
                f"{model.short_name} makes images of one fixed size; leave out {param}",
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


def _steps(value: Any, model: ModelSpec) -> int | None:
    if value is None:
        return model.default_steps if model.takes_steps else None
    steps = _int(value, "steps")
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


def _seed(value: Any, model: ModelSpec) -> int | None:
    if value is None:
        return None
    seed = _int(value, "seed")
    if not model.takes_seed:
        raise invalid(f"{model.short_name} takes no seed", param="seed")
    if not 0 <= seed <= MAX_SEED:
        raise invalid(f"seed must be an integer between 0 and {MAX_SEED}", param="seed")
    return seed


def _seeds(seed: int | None, n: int, model: ModelSpec) -> tuple[int | None, ...]:
    """One seed per image: seed, seed+1, ... when given, else random (so images differ)."""
    if not model.takes_seed:
        return (None,) * n
    if seed is None:
        return tuple(secrets.randbelow(_RANDOM_SEED_BOUND) for _ in range(n))
    return tuple(min(seed + i, MAX_SEED) for i in range(n))


def _guidance(value: Any, model: ModelSpec) -> float | None:
    if value is None:
        return None
    guidance = _number(value, "guidance")
    bounds = model.guidance_range
    if bounds is None:
        raise invalid(f"{model.short_name} takes no guidance", param="guidance")
    if guidance not in bounds:
        raise invalid(
            f"guidance must be between {bounds.minimum} and {bounds.maximum} for "
            f"{model.short_name}",
            param="guidance",
        )
    return guidance


def _negative_prompt(value: Any, model: ModelSpec, settings: Settings) -> str | None:
    if value is None or value == "":
        return None
    if not model.takes_negative_prompt:
        raise invalid(f"{model.short_name} takes no negative_prompt", param="negative_prompt")
    if not isinstance(value, str):
        raise invalid("negative_prompt must be a string", param="negative_prompt")
    if len(value) > settings.max_prompt_chars:
        raise invalid("negative_prompt is too long", param="negative_prompt")
    return value
