"""The Files API, as the openai SDK's `client.files` calls it: upload (multipart `file` and
`purpose`), list, retrieve, content, delete. Each handler only translates the wire format;
`flux_proxy.work.files.FileStore` keeps the files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import BinaryIO
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from flux_proxy.api.caller import caller_of
from flux_proxy.api.render import json_response
from flux_proxy.api.upload_stream import receive_upload
from flux_proxy.errors import invalid
from flux_proxy.work.batch_service import BatchParts
from flux_proxy.work.file_blobs import discard
from flux_proxy.work.files import expiry_seconds, public

MAX_LIST = 10_000  # OpenAI's page limit for files
CHUNK_BYTES = 1024 * 1024


def parts(request: Request) -> BatchParts:
    return request.app.state.batches


def page(data: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def expires_after(fields: dict[str, str], longest: float) -> float | None:
    """The lifetime `files.create(expires_after={"anchor": "created_at", "seconds": N})` asks
    for (sent as the form fields `expires_after[anchor]` and `expires_after[seconds]`), kept
    within FILES_TTL_SECONDS; None when the upload names none."""
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    return expiry_seconds(anchor, seconds, longest, param="expires_after[{}]", text_seconds=True)


def list_limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit must be an integer", param="limit") from None
    if not 1 <= limit <= maximum:
        raise invalid(f"limit must be between 1 and {maximum}", param="limit")
    return limit


async def upload(request: Request) -> Response:
    settings = request.app.state.services.settings
    files = parts(request).files
    # The file part streams to disk as it arrives (up to 200 MB, never all in memory).
    received = await receive_upload(
        request,
        files.blobs.spool_path(),
        max_file_bytes=settings.files_max_bytes,
        max_field_bytes=64 * 1024,
        body_timeout=max(settings.body_read_timeout, 600.0),  # 200 MB take a while
    )
    try:
        purpose = received.fields.get("purpose")
        if not purpose:
            raise invalid("purpose is required", param="purpose", code="missing_required_parameter")
        if received.path is None:
            raise invalid(
                "send exactly one file, in the multipart field 'file'",
                param="file",
                code="missing_required_parameter",
            )
        doc = await files.upload_spooled(
            caller_of(request.scope).name,
            received.filename or "file",
            purpose,
            received.path,
            received.size,
            ttl=expires_after(received.fields, settings.files_ttl_seconds),
        )
    finally:
        if received.path is not None:
            discard(received.path)  # refused before it was kept
    return json_response(public(doc))


async def list_files(request: Request) -> Response:
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid("order must be 'asc' or 'desc'", param="order")
    docs, has_more = await parts(request).files.list(
        caller_of(request.scope),
        purpose=query.get("purpose") or None,
        limit=list_limit(request, MAX_LIST, MAX_LIST),
        after=query.get("after") or None,
        order=order,
    )
    return json_response(page([public(d) for d in docs], has_more))


async def retrieve(request: Request) -> Response:
    doc = await parts(request).files.get(request.path_params["file_id"], caller_of(request.scope))
    return json_response(public(doc))


async def content(request: Request) -> Response:
    contents, doc = await parts(request).files.open_content(
        request.path_params["file_id"], caller_of(request.scope)
    )
    return StreamingResponse(
        _chunks(contents),
        media_type=doc["content_type"],
        headers={
            # The open file's own size: an output file rewritten meanwhile stays whole.
            "content-length": str(os.fstat(contents.fileno()).st_size),
            "content-disposition": _attachment(doc["filename"]),
            "x-content-type-options": "nosniff",
        },
    )


async def _chunks(contents: BinaryIO) -> AsyncIterator[bytes]:
    """A stored file in 1 MB reads off the event loop: never all of it in memory."""
    try:
        while chunk := await asyncio.to_thread(contents.read, CHUNK_BYTES):
            yield chunk
    finally:
        contents.close()


async def delete(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    await parts(request).files.delete(file_id, caller_of(request.scope))
    return json_response({"id": file_id, "object": "file", "deleted": True})


def _attachment(filename: str) -> str:
    """A Content-Disposition for any name: header values are Latin-1 at most, so an ASCII
    `filename` for old clients and the UTF-8 name as RFC 6266's `filename*`."""
    name = filename[:100]
    plain = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "._- ")) or "file"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def file_routes() -> list[BaseRoute]:
    return [
        Route("/v1/files", upload, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}", delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", content, methods=["GET"]),
    ]
