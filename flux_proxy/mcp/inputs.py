"""Tool arguments → the `RawRequest` the HTTP API's validator reads, so an agent's request is
judged by the same rules, with the same messages, as an OpenAI client's.

Reference images may be `data:` URLs (passed on untouched), this proxy's own image URLs
(`…/v1/images/files/<name>`, read from its image stores: the network is never fetched), and,
over stdio only, local file paths or `file://` URLs. Everything becomes a `data:` URL in the
caller's order, so the validator sees one kind of reference and `input_image_0..N` keep
that order upstream.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flux_proxy.api.body import RawRequest
from flux_proxy.api.render import FILES_PATH
from flux_proxy.errors import ApiError, invalid, too_large
from flux_proxy.image_store import ImageStore

MAX_N = 4  # every image of a call comes back in one answer, which must stay small


def image_arguments(
    *,
    prompt: Any,
    model: Any,
    size: Any,
    steps: Any,
    seed: Any,
    n: Any,
) -> dict[str, Any]:
    """The plain fields, as a JSON body would carry them (absent ones left out)."""
    if isinstance(n, int) and not isinstance(n, bool) and not 1 <= n <= MAX_N:
        raise invalid(
            f"n must be between 1 and {MAX_N} (every image comes back in one answer); got {n}",
            param="n",
        )
    values = {"prompt": prompt, "model": model, "size": size, "steps": steps, "seed": seed, "n": n}
    return {name: value for name, value in values.items() if value is not None}


async def as_data_urls(
    items: Any,
    *,
    param: str,
    images: Sequence[ImageStore],
    max_bytes: int,
    local_files: bool,
) -> Any:
    """Each reference as a `data:` URL, in order. What is not a string (or a list of them)
    goes on as it is, for the validator to refuse with its own message."""
    if items is None:
        return None
    if isinstance(items, str):
        return await _as_data_url(
            items, param=param, images=images, max_bytes=max_bytes, local_files=local_files
        )
    if not isinstance(items, list):
        return items
    return [
        await _as_data_url(
            item, param=param, images=images, max_bytes=max_bytes, local_files=local_files
        )
        if isinstance(item, str)
        else item
        for item in items
    ]


async def _as_data_url(
    item: str, *, param: str, images: Sequence[ImageStore], max_bytes: int, local_files: bool
) -> str:
    text = item.strip()
    if text[:5].lower() == "data:":
        return text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") or text.startswith(FILES_PATH):
        return await _own_image(parts.path, param=param, images=images)
    if local_files and (scheme == "file" or scheme == "" or _is_windows_drive(text)):
        where_from = unquote(parts.path) if scheme == "file" else text
        return await asyncio.to_thread(_read_file, where_from, param, max_bytes)
    where = " or a local file path" if local_files else ""
    raise invalid(
        f"{param}: each image must be a data: URL, this proxy's own image URL "
        f"(…{FILES_PATH}<name>){where}; the proxy never fetches other URLs",
        param=param,
        code="unsupported_url",
    )


def _is_windows_drive(text: str) -> bool:
    return len(text) > 2 and text[1] == ":" and text[0].isalpha()


async def _own_image(path: str, *, param: str, images: Sequence[ImageStore]) -> str:
    """One of this proxy's images, from the first of its stores that has it (URL answers',
    then batch answers', as `GET /v1/images/files/<name>` looks)."""
    if not path.startswith(FILES_PATH):
        raise invalid(
            f"{param}: only this proxy's own image URLs (…{FILES_PATH}<name>) and data: URLs "
            "are accepted; the proxy never fetches other URLs",
            param=param,
            code="unsupported_url",
        )
    name = path.removeprefix(FILES_PATH)
    found = None
    for store in images:
        if (found := await store.get(name)) is not None:
            break
    if found is None:
        raise invalid(
            f"{param}: no such image on this proxy, or it has expired",
            param=param,
            code="image_not_found",
        )
    data, content_type = found
    return _data_url(data, content_type)


def _read_file(name: str, param: str, max_bytes: int) -> str:
    path = Path(name).expanduser()
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise too_large(f"{param}: {path} is {size} bytes; the limit is {max_bytes}", param)
        data = path.read_bytes()
    except ApiError:
        raise
    except OSError as error:
        reason = error.strerror or type(error).__name__
        if not path.is_absolute():
            # The host, not the agent, chose where the server runs (often `/`).
            reason += (
                f" (relative paths are read from the server's working directory, {Path.cwd()};"
                " give an absolute path)"
            )
        raise invalid(f"{param}: cannot read {path}: {reason}", param=param) from None
    return _data_url(data, mimetypes.guess_type(path.name)[0] or "application/octet-stream")


def _data_url(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def raw_request(fields: dict[str, Any], **references: Any) -> RawRequest:
    """A JSON-like body: the plain fields plus the references that were given."""
    body = dict(fields)
    body.update({name: value for name, value in references.items() if value is not None})
    return RawRequest(body)


_HTTP_IMAGE_FIELDS = " (images, or image in an edit)"  # how the validator names both forms


def renamed(error: ApiError, old: str, new: str) -> ApiError:
    """The validator names JSON fields (and `image`, a multipart edit's); a tool whose
    argument has another name says its own."""
    if error.param not in (old, "image"):
        return error
    message = error.message.replace(_HTTP_IMAGE_FIELDS, f" in {new}")
    if message.startswith(f"{error.param}:"):
        message = new + message[len(error.param) :]
    return ApiError(
        error.status, message, type=error.type, param=new, code=error.code, headers=error.headers
    )
