"""The OpenAPI 3.1 document for every route, served at `GET /openapi.json` (no key needed).

Bounds that depend on the model (sizes, steps, guidance, prompt length) are the widest any
served model accepts, read from the model table, so the document never refuses what some model
takes; the per-model limits are in `GET /v1/models` and enforced with a 400 naming the param.
Every error, whatever the route, has the one OpenAI shape (`Error`).
"""

from __future__ import annotations

import functools
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flux_proxy import __version__
from flux_proxy.api.parse import MAX_N
from flux_proxy.api.render import json_response
from flux_proxy.models import MODELS

OPENAPI_PATH = "/openapi.json"
MAX_REFERENCES = max(model.max_references for model in MODELS)

_REF = "#/components/schemas/"
_ERROR_STATUSES: dict[str, str] = {
    "400": "The request is invalid; `param` names the field (no upstream call was made).",
    "401": "Missing or invalid API key.",
    "404": "No such route, model or image.",
    "405": "Method not allowed on this route.",
    "408": "The request body did not arrive within BODY_READ_TIMEOUT.",
    "413": "The body, an image, or (per Workers AI) the request is too large.",
    "415": "The Content-Type is neither JSON nor a form.",
    "429": "Every usable account is out of neurons, cooling down or busy; see Retry-After.",
    "502": "Workers AI failed on every account tried.",
    "503": "No account can serve this model, or none is configured.",
    "504": "No account produced an image within REQUEST_DEADLINE.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {"$ref": f"#/components/responses/Error{status}"}
        for status in statuses
        if status in _ERROR_STATUSES
    }


def _widest(attribute: str) -> tuple[float, float]:
    ranges = [getattr(model, attribute) for model in MODELS if getattr(model, attribute)]
    return min(r.minimum for r in ranges), max(r.maximum for r in ranges)


def _image_fields(*, form: bool) -> dict[str, Any]:
    """The request fields shared by generations and edits, as JSON values or as form text."""
    size_min, size_max = _widest("size_range")
    steps_min, steps_max = _widest("steps_range")
    guidance_min, guidance_max = _widest("guidance_range")
    prompt_max = max(model.prompt_max_chars for model in MODELS)

    def integer(minimum: float, maximum: float, description: str) -> dict[str, Any]:
        schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
        if form:  # a form field is text: "30"
            schema = {"type": "string", "pattern": r"^\s*[+-]?\d{1,20}\s*$"}
        return schema | {"description": description}

    prompt: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "maxLength": prompt_max,
        "description": "What to draw. Limited by PROMPT and the model (see /v1/models).",
    }
    if not form:
        prompt = {
            "oneOf": [
                prompt,
                {
                    "type": "object",
                    "description": "A FLUX.2 JSON prompt, sent upstream as its compact JSON text.",
                },
            ]
        }
    names = [m.short_name for m in MODELS]
    fields: dict[str, Any] = {
        "prompt": prompt,
        "model": {
            "type": "string",
            "description": "A full @cf/... id, a short name, or an alias (dall-e-3, gpt-image-1 "
            "and MODEL_ALIASES). Default: DEFAULT_MODEL.",
            "examples": names,
        },
        "n": integer(1, MAX_N, "How many images; each is one upstream call with its own seed."),
        "size": {
            "type": "string",
            "description": "'auto' or WIDTHxHEIGHT within the model's size range.",
            "examples": ["1024x1024", "auto"],
        },
        "width": integer(size_min, size_max, "Overrides the width from `size`."),
        "height": integer(size_min, size_max, "Overrides the height from `size`."),
        "steps": integer(steps_min, steps_max, "Diffusion steps, for models that take them."),
        "seed": integer(0, 2**63 - 1, "Image i of n gets seed+i; random when absent."),
        "guidance": (
            {"type": "string"}
            if form
            else {"type": "number", "minimum": guidance_min, "maximum": guidance_max}
        )
        | {"description": "Prompt guidance, for models that take it."},
        "negative_prompt": {"type": "string", "description": "For models that take one."},
        "response_format": {
            "type": "string",
            "enum": ["b64_json", "url"],
            "description": "Absent: both `b64_json` and `url` are returned.",
        },
        "output_format": {"type": "string", "enum": ["png", "jpeg", "jpg", "webp"]},
        "output_compression": integer(0, 100, "Quality for jpeg and webp."),
        "quality": {
            "type": "string",
            "enum": ["auto", "low", "medium", "high", "standard", "hd"],
            "description": "Accepted and echoed; no served model has a quality knob.",
        },
        "background": {"type": "string", "enum": ["auto", "opaque"]},
        "stream": (
            {"type": "string", "enum": ["true", "false", "1", "0"]} if form else {"type": "boolean"}
        )
        | {"description": "Answer as server-sent events (text/event-stream)."},
        "partial_images": integer(0, 3, "Accepted; no served model makes partial images."),
        "style": {"type": "string", "description": "Accepted and ignored."},
        "user": {"type": "string", "description": "Accepted and ignored."},
        "moderation": {"type": "string", "description": "Accepted and ignored."},
    }
    return fields


def _data_url_images() -> dict[str, Any]:
    data_url = {
        "type": "string",
        "pattern": "^data:",
        "description": "A base64 data: URL. http(s), file and other URLs are refused with 400: "
        "the proxy never fetches a URL.",
    }
    item = {
        "oneOf": [
            data_url,
            {
                "type": "object",
                "required": ["image_url"],
                "properties": {
                    "image_url": {
                        "oneOf": [
                            data_url,
                            {
                                "type": "object",
                                "required": ["url"],
                                "properties": {"url": data_url},
                            },
                        ]
                    }
                },
            },
        ]
    }
    return {
        "type": "array",
        "items": item,
        "maxItems": MAX_REFERENCES,
        "description": "Reference images (PNG, JPEG or WebP), at most MAX_IMAGE_BYTES each.",
    }


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def _form_schema(*, edit: bool) -> dict[str, Any]:
    properties = _image_fields(form=True)
    properties["image"] = _binary("An image to edit or use as a reference (PNG, JPEG, WebP).")
    properties["image[]"] = {
        "type": "array",
        "items": _binary("A reference image."),
        "maxItems": MAX_REFERENCES,
    }
    for index in range(MAX_REFERENCES):
        properties[f"input_image_{index}"] = _binary(f"Reference image {index} (the seed's names).")
    schema: dict[str, Any] = {"type": "object", "required": ["prompt"], "properties": properties}
    if edit:
        schema["description"] = "At least one image: `image`, `image[]` or `input_image_N`."
    return schema


def _json_schema(*, edit: bool) -> dict[str, Any]:
    properties = _image_fields(form=False)
    properties["images"] = _data_url_images()
    return {
        "type": "object",
        "required": ["prompt", "images"] if edit else ["prompt"],
        "properties": properties,
    }


def _image_operation(*, edit: bool) -> dict[str, Any]:
    kind = "edit" if edit else "generation"
    name = "Edit" if edit else "Generation"
    return {
        "operationId": f"createImage{name}",
        "summary": f"Create images ({kind})",
        "description": "OpenAI Images API. Reference images only as uploads or data: URLs.",
        "security": [{"bearerAuth": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref(f"Image{name}Request")},
                "multipart/form-data": {"schema": _ref(f"Image{name}Form")},
            },
        },
        "responses": {
            "200": {
                "description": "The images (JSON), or with stream=true the events (SSE).",
                "headers": {"x-request-id": _ref_header("RequestId")},
                "content": {
                    "application/json": {"schema": _ref("ImagesResponse")},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            **_errors("400", "401", "408", "413", "415", "429", "502", "503", "504"),
        },
    }


def _ref_header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    nullable_number = {"type": ["number", "null"]}
    nullable_integer = {"type": ["integer", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": nullable_string,
                        "code": nullable_string,
                    },
                }
            },
        },
        "ImageGenerationRequest": _json_schema(edit=False),
        "ImageEditRequest": _json_schema(edit=True),
        "ImageGenerationForm": _form_schema(edit=False),
        "ImageEditForm": _form_schema(edit=True),
        "Image": {
            "type": "object",
            "properties": {
                "b64_json": {"type": "string"},
                "url": {"type": "string"},
                "revised_prompt": {"type": "string"},
            },
        },
        "ImagesResponse": {
            "type": "object",
            "required": ["created", "data"],
            "properties": {
                "created": {"type": "integer"},
                "data": {"type": "array", "items": _ref("Image")},
                "model": {"type": "string"},
                "seed": nullable_integer,
                "seeds": {"type": "array", "items": nullable_integer},
                "size": nullable_string,
                "output_format": {"type": "string"},
                "errors": {
                    "type": "array",
                    "description": "Partial failure: which of the n images failed, and why.",
                    "items": {"type": "object"},
                },
            },
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Model")},
            },
        },
        "AccountStatus": {
            "type": "object",
            "required": ["number", "account", "state"],
            "properties": {
                "number": {"type": "integer"},
                "account": {"type": "string", "description": "Masked id."},
                "state": {"enum": ["available", "cooling", "parked", "disabled"]},
                "until": nullable_string,
                "reason": nullable_string,
                "neurons_used_today": {"type": "number"},
                "neurons_remaining_today": nullable_number,
                "in_flight": {"type": "integer"},
                "next_reset": {"type": "string"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "counts", "next_reset"],
            "properties": {
                "status": {"enum": ["ok", "degraded", "unavailable"]},
                "reason": nullable_string,
                "version": {"type": "string"},
                "counts": {"type": "object", "description": "Accounts per state."},
                "neurons_remaining_today": nullable_number,
                "next_reset": {"type": "string"},
                "accounts": {
                    "type": "array",
                    "items": _ref("AccountStatus"),
                    "description": "Only with an admin key.",
                },
                "store": {"type": "object"},
            },
        },
    }


def _error_responses() -> dict[str, Any]:
    return {
        f"Error{status}": {
            "description": description,
            "headers": {"x-request-id": _ref_header("RequestId")}
            | ({"Retry-After": _ref_header("RetryAfter")} if status == "429" else {}),
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for status, description in _ERROR_STATUSES.items()
    }


def _paths() -> dict[str, Any]:
    keyed = [{"bearerAuth": []}]
    model_param = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "A full @cf/... id (its slashes included), a short name or an alias.",
    }
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    image_file = {
        "summary": "A generated image handed out as a URL (its random name is the credential)",
        "security": [],
        "parameters": [name_param],
        "responses": {
            "200": {
                "description": "The image bytes.",
                "content": {
                    mime: {"schema": {"type": "string", "format": "binary"}}
                    for mime in ("image/png", "image/jpeg", "image/webp")
                },
            },
            **_errors("404"),
        },
    }
    health = _json_ok("At least one account can serve now.", _ref("Health"))
    ready_schema = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"enum": ["ready", "not_ready"]}, "reason": nullable()},
    }
    return {
        "/v1/images/generations": {"post": _image_operation(edit=False)},
        "/v1/images/edits": {"post": _image_operation(edit=True)},
        "/v1/images/files/{name}": {
            "get": image_file | {"operationId": "getImageFile"},
            "head": image_file | {"operationId": "headImageFile"},
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "security": keyed,
                "responses": {
                    "200": _json_ok("The served models.", _ref("ModelList")),
                    **_errors("401"),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "security": keyed,
                "parameters": [model_param],
                "responses": {
                    "200": _json_ok("One model.", _ref("Model")),
                    **_errors("401", "404"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": health,
                    "503": _json_ok("No account can serve now.", _ref("Health")),
                },
            }
        },
        "/health/live": {
            "get": {
                "operationId": "healthLive",
                "security": [],
                "responses": {
                    "200": _json_ok(
                        "The process answers.",
                        {"type": "object", "properties": {"status": {"const": "alive"}}},
                    )
                },
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "healthReady",
                "security": [],
                "responses": {
                    "200": _json_ok("Ready to serve.", ready_schema),
                    "503": _json_ok("Not ready.", ready_schema),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/": {
            "get": {
                "operationId": "webPage",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The web page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors("404"),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": _json_ok("This document.", {"type": "object"}),
                },
            }
        },
    }


def nullable() -> dict[str, Any]:
    return {"type": ["string", "null"]}


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole document (built once; it depends only on the code and the model table)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flux-proxy",
            "version": __version__,
            "description": "The OpenAI Images API in front of Cloudflare Workers AI image "
            "models, with failover across accounts. The static web page's files are under "
            "/static/ (not listed).",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _error_responses(),
            "headers": {
                "RequestId": {
                    "description": "Echoes a sane X-Request-Id, else a new id.",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds until an account is usable again.",
                    "schema": {"type": "string", "pattern": r"^\d+$"},
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API_MASTER_KEY (one of them, when several are set).",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }


async def openapi_json(request: Request) -> Response:
    return json_response(openapi_document())


def openapi_route() -> Route:
    return Route(OPENAPI_PATH, openapi_json, methods=["GET"])
