"""The model table in the shape of Cloudflare's model catalogue.

`GET /accounts/{id}/ai/models/search` lists models and `GET .../ai/models/schema?model=` gives
one model's input and output JSON schema (the same schemas as the catalogue files in
cloudflare/cloudflare-docs). This module writes what the table believes those answers say, so
the emulator can serve them and `flux-proxy models --check` can compare them with Cloudflare's.

Bounds are the catalogue's, not ours: where the table enforces a tighter one, the entry's
`catalogue_bounds` says what Cloudflare states, and that is what is written here. Defaults are
the table's; where the catalogue states none (sizes of the SD models, schnell's 4 steps,
lucid's 15), the check does not count ours as drift.
"""

from __future__ import annotations

import uuid
from typing import Any

from flux_proxy.models import OWN_PROMPT_LIMIT, FloatRange, IntRange, ModelSpec

TEXT_TO_IMAGE = "Text-to-Image"
TASK = {
    # The id Cloudflare's catalogue files give the Text-to-Image task.
    "id": "3d6e1f35-341b-4915-a6c8-9a7142a9033a",
    "name": TEXT_TO_IMAGE,
    "description": (
        "Generates images from input text. These models can be used to generate and modify "
        "images based on text prompts."
    ),
}
_BYTE_ARRAY = {
    "type": "array",
    "items": {"type": "number", "description": "A value between 0 and 255"},
}
# Namespace for the emulator's stable model ids (Cloudflare's own are random UUIDs).
_ID_NAMESPACE = uuid.UUID("6f1c3a52-1f0e-4c8e-9a57-64c1f1a0c0de")


def search_entry(spec: ModelSpec) -> dict[str, Any]:
    """One element of the search answer's `result`."""
    return {
        "id": str(uuid.uuid5(_ID_NAMESPACE, spec.id)),
        "source": 1,
        "name": spec.id,
        "description": spec.description,
        "task": dict(TASK),
        "tags": [],
        "properties": [],
    }


def model_schema(spec: ModelSpec) -> dict[str, Any]:
    """The schema answer's `result`: `{"input": ..., "output": ...}`."""
    return {"input": input_schema(spec), "output": output_schema(spec)}


def input_schema(spec: ModelSpec) -> dict[str, Any]:
    if spec.body == "multipart":
        # FLUX.2: the catalogue publishes no fields, only that the body is multipart.
        return {
            "type": "object",
            "properties": {
                "multipart": {
                    "type": "object",
                    "properties": {"body": {"type": "object"}, "contentType": {"type": "string"}},
                }
            },
            "required": ["multipart"],
        }
    bounds = {name: (low, high) for name, low, high in spec.catalogue_bounds}
    properties: dict[str, Any] = {}

    def put(name: str, kind: str, our_range: Any = None, default: Any = None) -> None:
        declared: dict[str, Any] = {"type": kind}
        low, high = bounds.get(name, _range_of(our_range))
        if kind == "string":
            if low is not None:
                declared["minLength"] = int(low)
            if high is not None:
                declared["maxLength"] = int(high)
        else:
            if low is not None:
                declared["minimum"] = low
            if high is not None:
                declared["maximum"] = high
        if default is not None:
            declared["default"] = default
        properties[name] = declared

    prompt_max = None if spec.prompt_max_chars == OWN_PROMPT_LIMIT else spec.prompt_max_chars
    put("prompt", "string", (1, prompt_max))
    if spec.takes_negative_prompt:
        put("negative_prompt", "string")
    if spec.size_range is not None:
        put("height", "integer", spec.size_range, spec.default_height)
        put("width", "integer", spec.size_range, spec.default_width)
    if spec.takes_references:
        properties["image"] = dict(_BYTE_ARRAY)
        properties["image_b64"] = {"type": "string"}
    if spec.takes_mask:
        properties["mask"] = dict(_BYTE_ARRAY)
    if spec.steps_field and spec.steps_range is not None:
        for name in (spec.steps_field, *spec.steps_aliases):
            put(name, "integer", spec.steps_range, spec.default_steps)
    if spec.strength_range is not None:
        put("strength", "number", spec.strength_range, spec.default_strength)
    if spec.guidance_range is not None:
        put("guidance", "number", spec.guidance_range, spec.default_guidance)
    if spec.takes_seed:
        put("seed", "integer")
    return {"type": "object", "properties": properties, "required": ["prompt"]}


def output_schema(spec: ModelSpec) -> dict[str, Any]:
    if spec.answer == "raw_bytes":
        return {
            "type": "string",
            "contentType": spec.answer_mime or "image/png",
            "format": "binary",
        }
    return {
        "type": "object",
        "contentType": "application/json",
        "properties": {"image": {"type": "string"}},
    }


def _range_of(value: IntRange | FloatRange | tuple | None) -> tuple[Any, Any]:
    if value is None:
        return None, None
    if isinstance(value, tuple):
        return value
    return value.minimum, value.maximum
