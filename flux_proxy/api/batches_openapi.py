"""The Files and Batch APIs in `/openapi.json` (registered at import, like every resource)."""

from __future__ import annotations

from typing import Any

from flux_proxy.api import openapi

_STAMP = {"type": ["integer", "null"]}

FILE = openapi.add_schema(
    "FileObject",
    {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "file"},
            "bytes": {"type": "integer"},
            "created_at": {"type": "integer"},
            "expires_at": _STAMP,
            "filename": {"type": "string"},
            "purpose": {"enum": ["batch", "vision", "user_data", "batch_output"]},
            "status": {"const": "processed"},
            "status_details": {"type": ["string", "null"]},
        },
    },
)

BATCH = openapi.add_schema(
    "Batch",
    {
        "type": "object",
        "description": "OpenAI's batch object, plus estimated_neurons, estimated_completion_at, "
        "neurons_used and request_counts.expired/cancelled (extensions).",
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "batch"},
            "endpoint": {"enum": ["/v1/images/generations", "/v1/images/edits"]},
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string", "examples": ["24h", "72h", "7d"]},
            "status": {
                "enum": [
                    "validating",
                    "failed",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "expired",
                    "cancelling",
                    "cancelled",
                ]
            },
            "output_file_id": {"type": ["string", "null"]},
            "error_file_id": {"type": ["string", "null"]},
            **{
                name: _STAMP
                for name in (
                    "created_at",
                    "in_progress_at",
                    "expires_at",
                    "finalizing_at",
                    "completed_at",
                    "failed_at",
                    "expired_at",
                    "cancelling_at",
                    "cancelled_at",
                    "estimated_completion_at",
                )
            },
            "request_counts": {
                "type": "object",
                "properties": {
                    name: {"type": "integer"}
                    for name in ("total", "completed", "failed", "expired", "cancelled")
                },
            },
            "errors": {"type": ["object", "null"]},
            "metadata": {"type": ["object", "null"]},
            "estimated_neurons": {"type": "number"},
            "neurons_used": {"type": "number"},
        },
    },
)

ESTIMATE = openapi.add_schema(
    "BatchEstimate",
    {
        "type": "object",
        "properties": {
            "object": {"const": "batch.estimate"},
            "endpoint": {"type": "string"},
            "lines": {"type": "integer"},
            "estimated_neurons": {"type": "number"},
            "estimated_completion_at": _STAMP,
            "estimated_days": {"type": ["integer", "null"]},
        },
    },
)


def _page(item: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": item},
            "first_id": {"type": ["string", "null"]},
            "last_id": {"type": ["string", "null"]},
            "has_more": {"type": "boolean"},
        },
    }


def _with_id(spec: dict[str, Any], name: str) -> dict[str, Any]:
    spec["parameters"] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    return spec


_UPLOAD = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary"},
        "purpose": {"enum": ["batch", "vision", "user_data"]},
    },
}
_CREATE = {
    "type": "object",
    "required": ["input_file_id", "endpoint"],
    "properties": {
        "input_file_id": {"type": "string"},
        "endpoint": {"enum": ["/v1/images/generations", "/v1/images/edits"]},
        "completion_window": {"type": "string", "default": "24h"},
        "metadata": {"type": ["object", "null"]},
    },
}
_ESTIMATE_BODY = {
    "type": "object",
    "required": ["bodies"],
    "properties": {
        "endpoint": {"enum": ["/v1/images/generations", "/v1/images/edits"]},
        "bodies": {"type": "array", "items": {"type": "object"}},
    },
}
_DELETED = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "object": {"const": "file"}, "deleted": {}},
}
_CONTENT = {"description": "The file's bytes", "content": {"application/octet-stream": {}}}
_ERRORS = ("400", "401", "404", "413", "503")

for path, method, spec in (
    (
        "/v1/files",
        "post",
        openapi.operation(
            "createFile",
            "Upload a file (batch JSONL, or a reference image)",
            body=openapi.request_body(form=_UPLOAD),
            ok=openapi.json_ok("The file", FILE),
            errors_=_ERRORS,
        ),
    ),
    (
        "/v1/files",
        "get",
        openapi.operation("listFiles", "List your files", ok=openapi.json_ok("", _page(FILE))),
    ),
    (
        "/v1/files/{file_id}",
        "get",
        _with_id(
            openapi.operation(
                "retrieveFile", "A file", ok=openapi.json_ok("The file", FILE), errors_=_ERRORS
            ),
            "file_id",
        ),
    ),
    (
        "/v1/files/{file_id}",
        "delete",
        _with_id(
            openapi.operation(
                "deleteFile", "Delete a file", ok=openapi.json_ok("", _DELETED), errors_=_ERRORS
            ),
            "file_id",
        ),
    ),
    (
        "/v1/files/{file_id}/content",
        "get",
        _with_id(
            openapi.operation("downloadFile", "A file's contents", ok=_CONTENT, errors_=_ERRORS),
            "file_id",
        ),
    ),
    (
        "/v1/batches",
        "post",
        openapi.operation(
            "createBatch",
            "Create a batch of image requests",
            body=openapi.request_body(json=_CREATE),
            ok=openapi.json_ok("The batch", BATCH),
            errors_=_ERRORS,
        ),
    ),
    (
        "/v1/batches",
        "get",
        openapi.operation("listBatches", "List your batches", ok=openapi.json_ok("", _page(BATCH))),
    ),
    (
        "/v1/batches/estimate",
        "post",
        openapi.operation(
            "estimateBatch",
            "Estimate a batch's neurons and completion before submitting (extension)",
            body=openapi.request_body(json=_ESTIMATE_BODY),
            ok=openapi.json_ok("The estimate", ESTIMATE),
            errors_=_ERRORS,
        ),
    ),
    (
        "/v1/batches/{batch_id}",
        "get",
        _with_id(
            openapi.operation(
                "retrieveBatch", "A batch", ok=openapi.json_ok("The batch", BATCH), errors_=_ERRORS
            ),
            "batch_id",
        ),
    ),
    (
        "/v1/batches/{batch_id}/cancel",
        "post",
        _with_id(
            openapi.operation(
                "cancelBatch",
                "Cancel a batch: no new line starts",
                ok=openapi.json_ok("The batch", BATCH),
                errors_=("401", "404", "409", "503"),
            ),
            "batch_id",
        ),
    ),
):
    openapi.add_operation(path, method, spec)
