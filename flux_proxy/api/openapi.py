"""The OpenAPI 3.1 document for every route, served at `GET /openapi.json` (no key needed).

Request bodies are not written out here: each is a pydantic declaration (`schemas.py` for the
images routes), and its schema is read from it, the same declaration the route validates
with. A multipart form's schema is derived from the JSON one (numbers and flags as text) plus
its declared file parts. Bounds that depend on the model are the widest any served model
accepts, read from the model table; the per-model limits are in `GET /v1/models` and enforced
with a 400 naming the param. Every error, whatever the route, has the one OpenAI shape.

Other resources add themselves where they define their routes, at import time:

    from flux_proxy.api import openapi
    openapi.add_operation("/v1/files", "post", openapi.operation(
        "createFile", "Upload a file",
        body=openapi.request_body(form=openapi.add_form("FileUpload", FileFields, FileParts)),
        ok=openapi.json_ok("The file.", openapi.add_schema("FileObject", FileObject)),
        errors=("400", "401", "413"),
    ))

`add_schema` takes a pydantic model (its nested models become components too) or a plain
JSON Schema dict, and returns the `$ref` to it.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flux_proxy import __version__
from flux_proxy.api.fields import INTEGER_TEXT
from flux_proxy.api.render import json_response
from flux_proxy.api.schemas import ImageEditBody, ImageFiles, ImageGenerationBody

OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/"
_ERROR_STATUSES: dict[str, str] = {
    "400": "The request is invalid; `param` names the field (no upstream call was made).",
    "401": "Missing or invalid API key.",
    "403": "The key may not do this.",
    "404": "No such route, model or image.",
    "405": "Method not allowed on this route.",
    "408": "The request body did not arrive within BODY_READ_TIMEOUT.",
    "409": "The request conflicts with one already made.",
    "413": "The body, an image, or (per Workers AI) the request is too large.",
    "415": "The Content-Type is neither JSON nor a form.",
    "429": "Every usable account is out of neurons, cooling down or busy; see Retry-After.",
    "502": "Workers AI failed on every account tried.",
    "503": "No account can serve this model, or none is configured.",
    "504": "No account produced an image within REQUEST_DEADLINE.",
}
IMAGE_ERRORS = ("400", "401", "408", "413", "415", "429", "502", "503", "504")

# --- the registry ---------------------------------------------------------------------------

_COMPONENTS: dict[str, Any] = {}
_OPERATIONS: dict[str, dict[str, Any]] = {}


class _Generator(GenerateJsonSchema):
    """Schemas without pydantic's titles and `default: null` noise."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> Any:
        return _tidy(super().generate(schema, mode=mode))


def _tidy(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _tidy(item)
            for key, item in value.items()
            if key != "title" and not (key == "default" and item is None)
        }
    if isinstance(value, list):
        return [_tidy(item) for item in value]
    return value


def declared_schema(declaration: type[BaseModel]) -> dict[str, Any]:
    """A declaration's JSON Schema; its nested models are added as components."""
    schema = declaration.model_json_schema(
        by_alias=True, ref_template=_REF + "{model}", schema_generator=_Generator
    )
    for name, nested in schema.pop("$defs", {}).items():
        _COMPONENTS[name] = nested
    return schema


def ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def add_schema(name: str, declaration: type[BaseModel] | dict[str, Any]) -> dict[str, str]:
    """Add a component schema (a pydantic model or a JSON Schema dict); returns its `$ref`."""
    schema = declaration if isinstance(declaration, dict) else declared_schema(declaration)
    _COMPONENTS[name] = schema
    openapi_document.cache_clear()
    return ref(name)


def add_form(
    name: str, fields: type[BaseModel], files: type[BaseModel] | None = None
) -> dict[str, str]:
    """Add the multipart form of a declaration: its fields as text, plus its file parts."""
    return add_schema(name, form_schema(fields, files))


def add_operation(path: str, method: str, spec: dict[str, Any]) -> None:
    _OPERATIONS.setdefault(path, {})[method.lower()] = spec
    openapi_document.cache_clear()


def form_schema(fields: type[BaseModel], files: type[BaseModel] | None) -> dict[str, Any]:
    """What a form carries: the declared fields as the text a form sends ("30", "true"), and
    the file parts. Values a form cannot hold (data URL lists, objects) are left out."""
    schema = declared_schema(fields)
    properties: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        text = _as_form_text(prop)
        if text is not None:
            properties[name] = text
    required = list(schema.get("required", []))
    if files is not None:
        parts = declared_schema(files)
        properties.update(parts.get("properties", {}))
        required += parts.get("required", [])
    form: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        form["required"] = required
    if schema.get("description"):
        form["description"] = schema["description"]
    return form


def _as_form_text(prop: dict[str, Any]) -> dict[str, Any] | None:
    described = {"description": prop["description"]} if "description" in prop else {}
    if "anyOf" in prop:  # e.g. a prompt: text, or a JSON object in a JSON body only
        texts = [branch for branch in prop["anyOf"] if branch.get("type") == "string"]
        return (texts[0] | described) if texts and not prop.get("items") else None
    kind = prop.get("type")
    if kind == "integer":
        return {"type": "string", "pattern": INTEGER_TEXT} | described
    if kind == "number":
        return {"type": "string"} | described
    if kind == "boolean":
        return {"type": "string", "enum": ["true", "false", "1", "0"]} | described
    if kind == "string":
        return prop
    return None


# --- building operations --------------------------------------------------------------------


def errors(*statuses: str) -> dict[str, Any]:
    return {
        status: {"$ref": f"#/components/responses/Error{status}"}
        for status in statuses
        if status in _ERROR_STATUSES
    }


def _ref_header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def request_body(
    *, json: dict[str, Any] | None = None, form: dict[str, Any] | None = None
) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if json is not None:
        content["application/json"] = {"schema": json}
    if form is not None:
        content["multipart/form-data"] = {"schema": form}
    return {"required": True, "content": content}


def operation(
    operation_id: str,
    summary: str,
    *,
    ok: dict[str, Any],
    body: dict[str, Any] | None = None,
    errors_: tuple[str, ...] = ("400", "401"),
    description: str | None = None,
    security: list[dict[str, list]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "security": [{"bearerAuth": []}] if security is None else security,
    }
    if description:
        spec["description"] = description
    if body is not None:
        spec["requestBody"] = body
    spec["responses"] = {"200": ok, **errors(*errors_)}
    return spec


def images_ok() -> dict[str, Any]:
    """The 200 of every images route: the images as JSON, or with stream=true the events."""
    return {
        "description": "The images (JSON), or with stream=true the events (SSE).",
        "headers": {"x-request-id": _ref_header("RequestId")},
        "content": {
            "application/json": {"schema": ref("ImagesResponse")},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }


def _declare_images() -> None:
    for name, body, path in (
        ("Generation", ImageGenerationBody, "/v1/images/generations"),
        ("Edit", ImageEditBody, "/v1/images/edits"),
    ):
        add_operation(
            path,
            "post",
            operation(
                f"createImage{name}",
                f"Create images ({name.lower()})",
                description="OpenAI Images API. Reference images only as uploads or data: URLs.",
                body=request_body(
                    json=add_schema(f"Image{name}Request", body),
                    form=add_form(f"Image{name}Form", body, ImageFiles),
                ),
                ok=images_ok(),
                errors_=IMAGE_ERRORS,
            ),
        )


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
                "data": {"type": "array", "items": ref("Image")},
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
                "data": {"type": "array", "items": ref("Model")},
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
                    "items": ref("AccountStatus"),
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
            "content": {"application/json": {"schema": ref("Error")}},
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
            **errors("404"),
        },
    }
    health = json_ok("At least one account can serve now.", ref("Health"))
    ready_schema = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"enum": ["ready", "not_ready"]}, "reason": nullable()},
    }
    return {
        "/v1/images/files/{name}": {
            "get": image_file | {"operationId": "getImageFile"},
            "head": image_file | {"operationId": "headImageFile"},
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "security": keyed,
                "responses": {
                    "200": json_ok("The served models.", ref("ModelList")),
                    **errors("401"),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "security": keyed,
                "parameters": [model_param],
                "responses": {
                    "200": json_ok("One model.", ref("Model")),
                    **errors("401", "404"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "security": [],
                "responses": {
                    "200": health,
                    "503": json_ok("No account can serve now.", ref("Health")),
                },
            }
        },
        "/health/live": {
            "get": {
                "operationId": "healthLive",
                "security": [],
                "responses": {
                    "200": json_ok(
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
                    "200": json_ok("Ready to serve.", ready_schema),
                    "503": json_ok("Not ready.", ready_schema),
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
                    **errors("404"),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": json_ok("This document.", {"type": "object"}),
                },
            }
        },
    }


def nullable() -> dict[str, Any]:
    return {"type": ["string", "null"]}


def _declare_the_rest() -> None:
    for name, schema in _schemas().items():
        add_schema(name, schema)
    for path, methods in _paths().items():
        for method, spec in methods.items():
            add_operation(path, method, spec)


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole document (built once after the last declaration; it depends only on the code
    and the model table)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flux-proxy",
            "version": __version__,
            "description": "The OpenAI Images API in front of Cloudflare Workers AI image "
            "models, with failover across accounts. The static web page's files are under "
            "/static/ (not listed).",
        },
        "paths": _OPERATIONS,
        "components": {
            "schemas": _COMPONENTS,
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


_declare_images()
_declare_the_rest()


async def openapi_json(request: Request) -> Response:
    return json_response(openapi_document())


def openapi_route() -> Route:
    return Route(OPENAPI_PATH, openapi_json, methods=["GET"])
