"""The files behind OpenAI's Files API: metadata as small documents in the state store (kind
`file`), contents in `DiskBlobs`. A file belongs to the caller who uploaded it (or to the owner
of the batch that wrote it); anyone else is told it does not exist.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from flux_proxy.api.caller import Caller
from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError, invalid, too_large
from flux_proxy.job import sniff_mime
from flux_proxy.settings import Settings
from flux_proxy.work.file_blobs import DiskBlobs, discard

FILE_KIND = "file"
# What a caller may upload here: batch inputs (JSONL) and reference images for batch lines.
UPLOAD_PURPOSES = ("batch", "vision", "user_data")
IMAGE_PURPOSES = ("vision", "user_data")
OUTPUT_PURPOSE = "batch_output"
_made = itertools.count()


def sort_key(now: float) -> list:
    """An order finer than `created_at`'s seconds: the exact time, then this process's count."""
    return [now, next(_made)]


_INTERNAL = ("owner", "content_type", "sort_key")


def public(doc: dict) -> dict:
    """OpenAI's FileObject: the stored document without what only the proxy needs."""
    return {key: value for key, value in doc.items() if key not in _INTERNAL}


def not_found(file_id: str) -> ApiError:
    return ApiError(404, f"No such File object: {file_id[:80]}", param="file_id", code="not_found")


EXPIRES_AFTER_SECONDS = (3600, 2_592_000)  # OpenAI's range: one hour to 30 days


def expiry_seconds(
    anchor: Any, seconds: Any, longest: float, *, param: str, text_seconds: bool = False
) -> float:
    """An OpenAI expiration policy (`{"anchor": "created_at", "seconds": N}`) as a lifetime,
    kept within `longest`. `param` names the fields, with `{}` for `anchor`/`seconds`; a
    form sends `seconds` as text (`text_seconds`)."""
    if anchor != "created_at":
        name = param.format("anchor")
        raise invalid(f"{name} must be 'created_at'", param=name)
    low, high = EXPIRES_AFTER_SECONDS
    if text_seconds and isinstance(seconds, str) and seconds.strip().isdigit():
        seconds = int(seconds)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
        name = param.format("seconds")
        raise invalid(f"{name} must be an integer between {low} and {high}", param=name)
    return float(min(seconds, longest))


def check_purpose(purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise invalid(
            f"purpose {purpose[:40]!r} is not kept here; this proxy takes 'batch' (JSONL "
            "batch inputs), 'vision' and 'user_data' (reference images for batch lines)",
            param="purpose",
        )


def _content_type(purpose: str, head: bytes, is_utf8: Callable[[], bool]) -> str:
    """What an upload of `purpose` must be: UTF-8 JSONL for batch inputs, else an image."""
    if not head:
        raise invalid("the file is empty", param="file")
    if purpose == "batch":
        if not is_utf8():
            raise invalid("a batch file must be UTF-8 JSONL", param="file")
        return "application/jsonl"
    content_type = sniff_mime(head)
    if not content_type.startswith("image/"):
        raise invalid(f"a {purpose} file must be a PNG, JPEG or WebP image", param="file")
    return content_type


def _is_utf8(chunks: Iterable[bytes]) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for chunk in chunks:
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _file_content_type(purpose: str, path: Path, size: int) -> str:
    with path.open("rb") as data:
        head = data.read(64) if size else b""
        data.seek(0)
        return _content_type(purpose, head, lambda: _is_utf8(iter(lambda: data.read(1 << 20), b"")))


class FileStore:
    def __init__(self, store: Any, blobs: DiskBlobs, clock: Clock, settings: Settings) -> None:
        self._store = store
        self.blobs = blobs
        self._clock = clock
        self._settings = settings

    async def upload(self, owner: str, filename: str, purpose: str, data: bytes) -> dict:
        check_purpose(purpose)
        limit = self._settings.files_max_bytes
        if len(data) > limit:
            raise too_large(f"the file is {len(data)} bytes; the limit is {limit}", param="file")
        content_type = _content_type(purpose, data[:64], lambda: _is_utf8([data]))
        return await self._put(
            owner, filename, purpose, data, content_type, self._settings.files_ttl_seconds
        )

    async def upload_spooled(
        self,
        owner: str,
        filename: str,
        purpose: str,
        spooled: Path,
        size: int,
        *,
        ttl: float | None = None,
    ) -> dict:
        """An upload already streamed to disk beside the blobs (`api/upload_stream.py`, which
        enforced the size limit): checked like `upload`, then kept by renaming it, for `ttl`
        seconds (None: FILES_TTL_SECONDS). `spooled` is gone afterwards, kept or refused."""
        try:
            check_purpose(purpose)
            content_type = await asyncio.to_thread(_file_content_type, purpose, spooled, size)
            doc = self._doc(owner, filename, purpose, size, content_type, ttl=ttl)
            await self.blobs.adopt(doc["id"], spooled, content_type, self._ttl(doc))
        finally:
            discard(spooled)  # kept by now (renamed away), or refused
        await self._store.put_doc(FILE_KIND, doc["id"], doc)  # after its contents, as in _put
        return doc

    async def put_output(
        self, file_id: str, owner: str, filename: str, data: bytes, ttl: float
    ) -> dict:
        """A batch's output or error file. Its id is chosen by the batch, so a second
        assembly (after a crash) overwrites the same file instead of making another."""
        return await self._put(
            owner, filename, OUTPUT_PURPOSE, data, "application/jsonl", ttl, file_id=file_id
        )

    async def _put(
        self,
        owner: str,
        filename: str,
        purpose: str,
        data: bytes,
        content_type: str,
        ttl: float,
        *,
        file_id: str | None = None,
    ) -> dict:
        doc = self._doc(owner, filename, purpose, len(data), content_type, ttl, file_id=file_id)
        await self.blobs.put_blob(doc["id"], data, content_type, ttl)  # contents first: a
        await self._store.put_doc(FILE_KIND, doc["id"], doc)  # listed file always has them
        return doc

    def _doc(
        self,
        owner: str,
        filename: str,
        purpose: str,
        size: int,
        content_type: str,
        ttl: float | None,
        *,
        file_id: str | None = None,
    ) -> dict:
        now = self._clock.now()
        ttl = self._settings.files_ttl_seconds if ttl is None else ttl
        return {
            "id": file_id or f"file-{secrets.token_hex(12)}",
            "object": "file",
            "bytes": size,
            "created_at": int(now),
            "filename": filename[:255] or "file",
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": int(now + ttl),
            "owner": owner,
            "content_type": content_type,
            "sort_key": sort_key(now),
        }

    def _ttl(self, doc: dict) -> float:
        return doc["expires_at"] - self._clock.now()

    async def get(self, file_id: str, caller: Caller) -> dict:
        doc = await self._store.get_doc(FILE_KIND, file_id)
        if doc is None or not caller.owns(doc["owner"]) or self._expired(doc):
            raise not_found(file_id)
        return doc

    async def content(self, file_id: str, caller: Caller) -> tuple[bytes, dict]:
        doc = await self.get(file_id, caller)
        found = await self.blobs.get_blob(file_id)
        if found is None:
            raise not_found(file_id)
        return found[0], doc

    async def open_content(self, file_id: str, caller: Caller) -> tuple[BinaryIO, dict]:
        """The contents opened for streaming (the caller closes them): a file may be 200 MB."""
        doc = await self.get(file_id, caller)
        found = await self.blobs.open_blob(file_id)
        if found is None:
            raise not_found(file_id)
        return found[0], doc

    async def list(
        self, caller: Caller, *, purpose: str | None, limit: int, after: str | None, order: str
    ) -> tuple[list[dict], bool]:
        docs = [
            doc
            for doc in await self._store.list_docs(FILE_KIND)
            if caller.owns(doc["owner"])
            and not self._expired(doc)
            and (purpose is None or doc["purpose"] == purpose)
        ]
        docs.sort(
            key=lambda d: (d.get("sort_key") or [d["created_at"]], d["id"]),
            reverse=order == "desc",
        )
        if after is not None:
            ids = [doc["id"] for doc in docs]
            docs = docs[ids.index(after) + 1 :] if after in ids else []
        return docs[:limit], len(docs) > limit

    async def delete(self, file_id: str, caller: Caller) -> None:
        await self.get(file_id, caller)
        await self._store.delete_doc(FILE_KIND, file_id)
        await self.blobs.delete(file_id)

    async def sweep(self) -> None:
        """Forget expired files (documents, then contents)."""
        for doc in await self._store.list_docs(FILE_KIND):
            if self._expired(doc):
                await self._store.delete_doc(FILE_KIND, doc["id"])
        await self.blobs.sweep()

    def _expired(self, doc: dict) -> bool:
        expires_at = doc.get("expires_at")
        return expires_at is not None and expires_at <= self._clock.now()
