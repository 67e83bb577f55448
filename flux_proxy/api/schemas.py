"""The request bodies of the images routes, declared once.

`validation.validate_body` checks a decoded body (JSON, or a form's text) against these, and
`openapi.py` shows the same declarations at `/openapi.json` (a form's schema is derived from
them: numbers and flags as text, files as binary parts). What depends on the model (sizes,
steps, guidance, prompt length, how many images) is checked per model in `parse.py` against the
model table; the schema shows the widest bound any served model takes, read from that table.

Accepted and ignored (documented): `quality`, `style`, `user`, `moderation`, `input_fidelity`
(edits) and `partial_images` (0-3; no served model makes partial images).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from flux_proxy.api.fields import (
    Choice,
    Flag,
    Integer,
    Number,
    OptionalText,
    Renamed,
    Size,
    Text,
    problem,
)
from flux_proxy.models import MODELS

MAX_N = 10
MAX_PARTIAL_IMAGES = 3  # OpenAI's range is 0-3
MAX_SEED = 2**63 - 1
MAX_EDIT_IMAGES = 16  # what OpenAI takes; beyond what the model takes is a 400 naming `image`
MAX_REFERENCES = max(model.max_references for model in MODELS)
QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max", "standard", "hd")


def widest(attribute: str) -> dict[str, float]:
    """The JSON Schema bounds covering every served model's range of `attribute`."""
    ranges = [getattr(model, attribute) for model in MODELS if getattr(model, attribute)]
    if not ranges:
        return {}
    return {
        "minimum": min(r.minimum for r in ranges),
        "maximum": max(r.maximum for r in ranges),
    }


PROMPT_MAX_CHARS = max(model.prompt_max_chars for model in MODELS)


def _prompt(value: Any) -> str:
    if isinstance(value, dict):
        # Seed compatibility: a JSON prompt goes upstream as its (compact) JSON text.
        return orjson.dumps(value).decode("utf-8")
    if not isinstance(value, str):
        raise problem("must be a string or a JSON object")
    if not value.strip():
        raise problem("must not be empty")
    return value


_PROMPT_TEXT = {
    "type": "string",
    "minLength": 1,
    "maxLength": PROMPT_MAX_CHARS,
    "description": "What to draw. Limited by PROMPT and the model (see /v1/models).",
}
Prompt = Annotated[
    str,
    BeforeValidator(_prompt),
    WithJsonSchema(
        {
            "anyOf": [
                _PROMPT_TEXT,
                {
                    "type": "object",
                    "description": "A FLUX.2 JSON prompt, sent upstream as its compact JSON text.",
                },
            ]
        }
    ),
]


def _background_refused(value: Any) -> None:
    if value == "transparent":
        raise problem(
            "cannot be 'transparent': no served model can make a transparent background; "
            "use 'auto' or 'opaque'",
            code="unsupported_parameter",
        )


def _image_list(value: Any) -> Any:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str | dict):
            raise problem("must be data: URL strings (or {image_url: ...} objects), one per image")
    return items


def _image(value: Any) -> Any:
    if not isinstance(value, str | dict):
        raise problem("must be a data: URL string (or an {image_url: ...} object)")
    return value


_DATA_URL = {
    "type": "string",
    "pattern": "^data:",
    "description": "A base64 data: URL. http(s), file and other URLs are refused with 400: "
    "the proxy never fetches a URL.",
}
_DATA_URL_IMAGE = {
    "anyOf": [
        _DATA_URL,
        {
            "type": "object",
            "required": ["image_url"],
            "properties": {
                "image_url": {
                    "anyOf": [
                        _DATA_URL,
                        {"type": "object", "required": ["url"], "properties": {"url": _DATA_URL}},
                    ]
                }
            },
        },
    ]
}
# The content of each data URL (base64, size, a real image) is checked in `references.py`.
DataUrlImage = Annotated[
    str | dict[str, Any], BeforeValidator(_image), WithJsonSchema(_DATA_URL_IMAGE)
]
DataUrlImages = Annotated[
    list[str | dict[str, Any]],
    BeforeValidator(_image_list),
    WithJsonSchema(
        {
            "type": "array",
            "items": _DATA_URL_IMAGE,
            "maxItems": MAX_EDIT_IMAGES,
            "description": "Reference images (PNG, JPEG or WebP), at most MAX_IMAGE_BYTES each; "
            "more than the model takes is a 400.",
        }
    ),
]


class ImageOptions(BaseModel):
    """What every images request may carry besides its prompt and images."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Text | SkipJsonSchema[None] = Field(
        None,
        description="A full @cf/... id, a short name, an OpenAI image model name (gpt-image-*, "
        "chatgpt-image-*, dall-e-*) or a MODEL_ALIASES name. Default: DEFAULT_MODEL.",
        examples=[m.short_name for m in MODELS],
    )
    n: Integer(1, MAX_N) = Field(
        1, description="How many images; each is one upstream call with its own seed."
    )
    size: Size | SkipJsonSchema[None] = Field(
        None,
        description="'auto' or WIDTHxHEIGHT within the model's size range; a fixed-size model "
        "takes its own size.",
    )
    width: Integer() | SkipJsonSchema[None] = Field(
        None, description="Overrides the width from `size`.", json_schema_extra=widest("size_range")
    )
    height: Integer() | SkipJsonSchema[None] = Field(
        None,
        description="Overrides the height from `size`.",
        json_schema_extra=widest("size_range"),
    )
    steps: Integer() | SkipJsonSchema[None] = Field(
        None,
        description="Diffusion steps, for models that take them.",
        json_schema_extra=widest("steps_range"),
    )
    seed: Integer(0, MAX_SEED) | SkipJsonSchema[None] = Field(
        None, description="Image i of n gets seed+i; random when absent."
    )
    guidance: Number | SkipJsonSchema[None] = Field(
        None,
        description="Prompt guidance, for models that take it.",
        json_schema_extra=widest("guidance_range"),
    )
    strength: Number | SkipJsonSchema[None] = Field(
        None,
        description="How far an image-to-image model moves from the image (models with a "
        "strength range only).",
        json_schema_extra=widest("strength_range"),
    )
    negative_prompt: OptionalText | SkipJsonSchema[None] = Field(
        None, description="For models that take one."
    )
    response_format: Choice("b64_json", "url") | SkipJsonSchema[None] = Field(
        None,
        description="Absent: as OpenAI answers for the model name used (gpt-image-*, "
        "chatgpt-image-*: b64_json; dall-e-*: url; other names: both), or "
        "DEFAULT_RESPONSE_FORMAT.",
    )
    output_format: (
        Renamed(Choice("png", "jpeg", "jpg", "webp", lowered=True), {"jpg": "jpeg"})
        | SkipJsonSchema[None]
    ) = None
    output_compression: Integer(0, 100, blank=True) | SkipJsonSchema[None] = Field(
        None, description="Quality for jpeg and webp."
    )
    quality: Choice(*QUALITIES, lowered=True) = Field(
        "auto", description="Accepted and echoed; no served model has a quality knob."
    )
    background: Choice("auto", "opaque", refuse=_background_refused) = Field(
        "auto", description="'transparent' is refused: no served model makes one."
    )
    stream: Flag = Field(False, description="Answer as server-sent events (text/event-stream).")
    partial_images: Integer(0, MAX_PARTIAL_IMAGES, blank=True) = Field(
        0, description="Accepted; no served model makes partial images."
    )
    style: Text | SkipJsonSchema[None] = Field(None, description="Accepted and ignored.")
    user: Text | SkipJsonSchema[None] = Field(None, description="Accepted and ignored.")
    moderation: Text | SkipJsonSchema[None] = Field(None, description="Accepted and ignored.")


class ImageGenerationBody(ImageOptions):
    """`POST /v1/images/generations`, JSON (or the seed's form)."""

    prompt: Prompt
    images: DataUrlImages | SkipJsonSchema[None] = None
    mask: DataUrlImage | SkipJsonSchema[None] = Field(
        None,
        description="A PNG data URL the size of the first image whose fully transparent "
        "pixels mark what to repaint (see images/edits).",
    )


class ImageEditBody(ImageGenerationBody):
    """`POST /v1/images/edits`: a generation with at least one image."""

    input_fidelity: Choice("high", "low", lowered=True) | SkipJsonSchema[None] = Field(
        None, description="Accepted and ignored: no served model has such a knob."
    )


class ImageVariationBody(ImageOptions):
    """`POST /v1/images/variations`: one image, no prompt (VARIATION_PROMPT is used)."""

    model: Text | SkipJsonSchema[None] = Field(
        None,
        description="One of the proxy's models that takes a reference image; anything else "
        "(dall-e-2, or none) means VARIATION_MODEL. The answer's form follows the name used.",
    )


# --- the files of a multipart body ------------------------------------------------------------

_BINARY = {"type": "string", "format": "binary"}


def _binary(description: str) -> Any:
    return Field(None, json_schema_extra={"description": description})


class ImageFiles(BaseModel):
    """The file parts of a generation or edit form. Their bytes are checked in
    `references.py`; a file part under any other name is a 400 naming it."""

    image: Annotated[bytes | None, WithJsonSchema(_BINARY)] = _binary(
        "An image to edit or use as a reference (PNG, JPEG, WebP)."
    )
    image_list: Annotated[
        list[bytes] | None,
        WithJsonSchema({"type": "array", "items": _BINARY, "maxItems": MAX_EDIT_IMAGES}),
    ] = Field(
        None,
        alias="image[]",
        json_schema_extra={"description": "Several images; beyond what the model takes: 400."},
    )
    mask: Annotated[bytes | None, WithJsonSchema(_BINARY)] = _binary(
        "A PNG the size of the first image; its fully transparent pixels mark what to repaint. "
        "Goes to the named model if it takes masks, else to MASK_MODEL."
    )
    input_image_0: Annotated[bytes | None, WithJsonSchema(_BINARY)] = _binary(
        "Reference image 0 (the seed's names, input_image_0 to input_image_3)."
    )
    input_image_1: Annotated[bytes | None, WithJsonSchema(_BINARY)] = _binary("Reference 1.")
    input_image_2: Annotated[bytes | None, WithJsonSchema(_BINARY)] = _binary("Reference 2.")
    input_image_3: Annotated[bytes | None, WithJsonSchema(_BINARY)] = _binary("Reference 3.")


class VariationFiles(BaseModel):
    image: Annotated[bytes, WithJsonSchema(_BINARY)] = Field(
        description="The image to vary (PNG, JPEG, WebP)."
    )


FILE_FIELDS = frozenset(
    info.alias or name for name, info in ImageFiles.model_fields.items()
) | frozenset(("images", "images[]"))
