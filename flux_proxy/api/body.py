"""Reading a request body into plain fields and files, within the size limits.

The body limit is enforced without reading an oversize body: a too-large `Content-Length` is
refused at once, and a chunked upload is counted while it streams and cut off at the limit.
JSON, multipart and urlencoded bodies all come out as one `RawRequest`, so the validator
(`parse.py`) never cares how the caller encoded them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import Request

from flux_proxy.errors import ApiError, invalid, too_large


@dataclass(frozen=True)
class UploadedFile:
    field: str  # the form field it came in: image, image[], input_image_0, ...
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RawRequest:
    """A body, decoded but not yet validated."""

    fields: dict[str, Any]  # JSON values, or text from a form
    files: list[UploadedFile] = field(default_factory=list)
    is_form: bool = False  # values are text and need coercing ("30" -> 30)


class _InMemoryMultiPartParser(MultiPartParser):
    # Keep files in memory (the body limit already bounds them) instead of spooling every
    # file over 1 MB to disk through a thread pool.
    spool_max_size = 256 * 1024 * 1024
    ended = False  # the closing boundary arrived

    def on_end(self) -> None:
        self.ended = True

    async def parse(self) -> FormData:
        form = await super().parse()
        if not self.ended:
            # Neither Starlette nor python-multipart checks this: a body cut short would
            # hand on a truncated image (or none) as if the form were whole.
            await form.close()
            raise MultiPartException("it ends before its closing boundary")
        return form


def media_type_of(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_declared_length(headers: Headers, limit: int) -> None:
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise invalid(
            "Content-Length is not a number", param=None, code="invalid_request"
        ) from None
    if length > limit:
        raise too_large(f"request body is {length} bytes; the limit is {limit}")


async def _counted(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, failing with 413 as soon as more than `limit` bytes arrived."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise too_large(f"request body is over the limit of {limit} bytes")
        yield chunk


async def _read_all(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in _counted(request, limit)])


def _single_chunk(data: bytes) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        yield data

    return gen()


def parse_json_object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON body: {exc}", param=None, code="invalid_json") from None
    if not isinstance(value, dict):
        raise invalid("the JSON body must be an object", param=None, code="invalid_json")
    return value


async def read_request(
    request: Request,
    *,
    max_body_bytes: int,
    max_field_bytes: int,
    body_timeout: float | None = None,
) -> RawRequest:
    """Decode a JSON, multipart or urlencoded body; 413 over `max_body_bytes`, 415 otherwise,
    408 when the whole body has not arrived within `body_timeout` seconds (a trickling client)."""
    # The timeout inline, not through `request_timeout`: this is the hot path, and the
    # generator-based context manager costs a few microseconds per request.
    try:
        async with asyncio.timeout(body_timeout):
            return await _read_request(request, max_body_bytes, max_field_bytes)
    except TimeoutError:
        raise body_late(body_timeout) from None


@contextlib.asynccontextmanager
async def request_timeout(body_timeout: float | None) -> AsyncIterator[None]:
    """408 when the body has not arrived within `body_timeout` seconds (a trickling client)."""
    try:
        async with asyncio.timeout(body_timeout):
            yield
    except TimeoutError:
        raise body_late(body_timeout) from None


def body_late(body_timeout: float | None) -> ApiError:
    return ApiError(
        408,
        f"the request body did not arrive within {body_timeout:g} s",
        code="request_timeout",
        headers={"connection": "close"},
    )


async def _read_request(request: Request, max_body_bytes: int, max_field_bytes: int) -> RawRequest:
    headers = request.headers
    check_declared_length(headers, max_body_bytes)
    media_type = media_type_of(headers)

    if media_type == "application/json" or media_type.endswith("+json"):
        return RawRequest(parse_json_object(await _read_all(request, max_body_bytes)))

    if media_type == "multipart/form-data":
        parser = _InMemoryMultiPartParser(
            headers,
            _counted(request, max_body_bytes),
            max_files=32,
            max_fields=100,
            max_part_size=max_field_bytes,
        )
        return await _form_request(parser)

    if media_type in ("application/x-www-form-urlencoded", ""):
        data = await _read_all(request, max_body_bytes)
        # `curl -d '{...}'` without a Content-Type header sends JSON labelled as a form.
        if data.lstrip().startswith(b"{"):
            return RawRequest(parse_json_object(data))
        if media_type == "" and data.strip():
            raise _unsupported(media_type)
        parser = FormParser(headers, _single_chunk(data), max_part_size=max_field_bytes)
        return await _form_request(parser)

    raise _unsupported(media_type)


def _unsupported(media_type: str) -> ApiError:
    return ApiError(
        415,
        f"unsupported Content-Type {media_type or '(none)'!r}; "
        "send application/json or multipart/form-data",
        code="unsupported_media_type",
    )


async def _form_request(parser: MultiPartParser | FormParser) -> RawRequest:
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise invalid(
            f"malformed form body: {exc.message}", param=None, code="invalid_multipart"
        ) from None
    except ValueError:  # python-multipart's own parse errors
        raise invalid("malformed form body", param=None, code="invalid_multipart") from None
    fields: dict[str, Any] = {}
    files: list[UploadedFile] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append(
                    UploadedFile(name, value.filename, value.content_type, await value.read())
                )
            else:
                fields[name] = value
    finally:
        await form.close()
    return RawRequest(fields, files, is_form=True)
