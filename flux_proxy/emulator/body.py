"""Reading a `/ai/run` request body, multipart or JSON, within a size limit.

The body is read whole before anything is judged, so the call log can show what the proxy
actually sent even when the answer is an error.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiohttp import BodyPartReader, web

from flux_proxy.emulator.envelope import CloudflareError

BodyForm = Literal["multipart", "json", "empty", "invalid"]

_CHUNK = 64 * 1024
# A part with this name is an image even when the sender gave it no filename.
_IMAGE_FIELD = re.compile(r"^input_image_\d+$")
# JSON bodies (the Stable Diffusion models) carry images as arrays of the file's bytes.
JSON_BYTE_ARRAYS = ("image", "mask")
JSON_BASE64 = "image_b64"


@dataclass(frozen=True)
class UploadedFile:
    data: bytes
    mime: str | None  # as declared by the sender, not sniffed


@dataclass
class CallBody:
    form: BodyForm
    fields: dict[str, Any] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)
    problem: str | None = None  # why the body could not be parsed, when it could not


def too_large() -> CloudflareError:
    return CloudflareError(413, 3006, "Request is too large")


async def read_body(request: web.Request, max_bytes: int) -> CallBody:
    """Parse the body; raises `CloudflareError` 413/3006 when it is bigger than `max_bytes`."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large()
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request, max_bytes)
    return _parse_json(await _read_limited(request, max_bytes))


async def _read_limited(request: web.Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> CallBody:
    # Workers AI parses any non-multipart body as JSON, whatever its Content-Type says.
    if not raw.strip():
        return CallBody(form="empty")
    try:
        value = orjson.loads(raw)  # an image as a byte array is megabytes of JSON
    except orjson.JSONDecodeError:
        return CallBody(form="invalid", problem="the body is not valid JSON")
    if not isinstance(value, dict):
        return CallBody(form="invalid", problem="the JSON body must be an object")
    body = CallBody(form="json", fields=value)
    _take_json_images(body)
    return body


def _take_json_images(body: CallBody) -> None:
    """Move well-formed `image`/`mask` byte arrays and `image_b64` into `files`, so the call
    log and the checks see images; malformed values stay in `fields` for validation to name."""
    for name in JSON_BYTE_ARRAYS:
        value = body.fields.get(name)
        if not isinstance(value, list):
            continue
        try:
            data = bytes(value)  # raises for anything but integers 0-255
        except (TypeError, ValueError):
            continue
        body.files[name] = UploadedFile(data=data, mime=None)
        del body.fields[name]
    value = body.fields.get(JSON_BASE64)
    if isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return
        body.files[JSON_BASE64] = UploadedFile(data=data, mime=None)
        del body.fields[JSON_BASE64]


async def _read_multipart(request: web.Request, max_bytes: int) -> CallBody:
    body = CallBody(form="multipart")
    total = 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):  # a nested multipart: not a form
                body.problem = "nested multipart parts are not supported"
                continue
            chunks: list[bytes] = []
            while chunk := await part.read_chunk(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise too_large()
                chunks.append(chunk)
            data = b"".join(chunks)
            name = part.name or ""
            if part.filename is not None or _IMAGE_FIELD.match(name):
                mime = part.headers.get("Content-Type")
                body.files[name] = UploadedFile(data=data, mime=mime)
            else:
                body.fields[name] = data.decode("utf-8", errors="replace")
    except CloudflareError:
        raise
    except (ValueError, AssertionError, RuntimeError) as exc:
        # aiohttp's reader signals a broken body (bad boundary, truncated part) this way.
        body.problem = f"the multipart body could not be parsed ({type(exc).__name__})"
    return body
