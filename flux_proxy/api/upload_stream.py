"""Receiving one uploaded file (`POST /v1/files`) straight onto the disk.

A Files API upload may be 200 MB, so its file part is never held in memory: the multipart
body is parsed as it streams in (python-multipart, the parser under Starlette's own), the
file part's bytes go to a temporary file in the blob directory as they arrive, and the upload
is refused with 413 the moment it passes the limit. The temporary file sits next to the
blobs, so keeping it is a rename (`DiskBlobs.adopt`), not a second copy.

Starlette's `MultiPartParser` spools too, but to an anonymous file in the system temp
directory (which cannot be renamed into `DATA_DIR`, so a kept file would be copied once more)
and the rest of this API keeps multipart files in memory on purpose (`body.py`).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from flux_proxy.api.body import check_declared_length, media_type_of, request_timeout
from flux_proxy.errors import ApiError, invalid, too_large
from flux_proxy.work.file_blobs import discard

MAX_FIELDS = 100
FILE_FIELD = "file"


@dataclass
class SpooledUpload:
    """The form's text fields, and its one file part as a temporary file on disk."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None  # None: the form had no `file` part
    size: int = 0


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _Receiver:
    """python-multipart's callbacks: small fields into memory, the file part's bytes into a
    list that `receive_upload` writes to disk after each chunk (off the event loop)."""

    def __init__(self, upload: SpooledUpload, max_file_bytes: int, max_field_bytes: int) -> None:
        self.upload = upload
        self.max_file_bytes, self.max_field_bytes = max_file_bytes, max_field_bytes
        self.pending: list[bytes] = []  # file bytes parsed but not written yet
        self.part = _Part()
        self.header_name = self.header_value = b""
        self.fields = 0
        self.has_file = False
        self.ended = False  # the closing boundary arrived

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda data, start, end: self._add_header(data[start:end], b""),
            "on_header_value": lambda data, start, end: self._add_header(b"", data[start:end]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()

    def _add_header(self, name: bytes, value: bytes) -> None:
        self.header_name += name
        self.header_value += value

    def on_header_end(self) -> None:
        self.part.headers.append((self.header_name.lower(), self.header_value))
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        disposition = dict(self.part.headers).get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if b"name" not in options:
            raise _malformed("a part has no name")
        self.part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            if self.part.name != FILE_FIELD or self.has_file:
                raise invalid(
                    "send exactly one file, in the multipart field 'file'",
                    param="file",
                    code="missing_required_parameter",
                )
            self.part.is_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
            self.has_file = True
        else:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise _malformed("too many fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part.is_file:
            self.upload.size += end - start
            if self.upload.size > self.max_file_bytes:
                raise too_large(
                    f"the file is over the limit of {self.max_file_bytes} bytes", param="file"
                )
            self.pending.append(data[start:end])
            return
        self.part.data.extend(data[start:end])
        if len(self.part.data) > self.max_field_bytes:
            raise too_large(f"the form field {self.part.name[:40]!r} is too long")

    def on_end(self) -> None:
        self.ended = True

    def on_part_end(self) -> None:
        if not self.part.is_file:
            self.upload.fields[self.part.name] = self.part.data.decode("utf-8", "replace")


async def receive_upload(
    request: Request,
    spool: Path,
    *,
    max_file_bytes: int,
    max_field_bytes: int,
    body_timeout: float,
) -> SpooledUpload:
    """Parse a multipart upload, its `file` part written to `spool` while it streams in.

    On any failure (413, a malformed body, a client gone) `spool` is removed again; on success
    the caller owns it and must adopt or remove it."""
    headers = request.headers
    check_declared_length(headers, max_file_bytes + max_field_bytes)  # + purpose, headers
    if media_type_of(headers) != "multipart/form-data":
        raise invalid(
            "upload the file as multipart/form-data, with the fields 'file' and 'purpose'",
            param="file",
            code="invalid_multipart",
        )
    _, params = parse_options_header(headers.get("content-type", ""))
    if b"boundary" not in params:
        raise _malformed("no multipart boundary")
    upload = SpooledUpload()
    receiver = _Receiver(upload, max_file_bytes, max_field_bytes)
    parser = python_multipart.MultipartParser(params[b"boundary"], receiver.callbacks())
    out: BinaryIO = await asyncio.to_thread(_open_new, spool)
    try:
        async with request_timeout(body_timeout):
            async for chunk in request.stream():
                try:
                    parser.write(chunk)
                except FormParserError:
                    raise _malformed("python-multipart could not parse it") from None
                if receiver.pending:
                    data = b"".join(receiver.pending)
                    receiver.pending.clear()
                    await asyncio.to_thread(out.write, data)
            parser.finalize()
        if not receiver.ended:
            # python-multipart's finalize does not check this: a body cut short would keep
            # a truncated file as if it were whole.
            raise _malformed("it ends before its closing boundary")
        await asyncio.to_thread(_close_synced, out)
    except BaseException:
        out.close()
        discard(spool)
        raise
    if receiver.has_file:
        upload.path = spool
    else:
        discard(spool)
    return upload


def _malformed(why: str) -> ApiError:
    return invalid(f"malformed form body: {why}", param=None, code="invalid_multipart")


def _open_new(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("xb")


def _close_synced(out: BinaryIO) -> None:
    with out:
        out.flush()
        os.fsync(out.fileno())
