"""The files behind OpenAI's Files API: metadata as small documents in the state store (kind
`file`), contents in `DiskBlobs`. A file belongs to the caller who uploaded it (or to the owner
of the batch that wrote it); anyone else is told it does not exist.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

from flux_proxy.api.caller import Caller
from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError, invalid, too_large
from flux_proxy.job import sniff_mime
from flux_proxy.settings import Settings
from flux_proxy.work.file_blobs import DiskBlobs

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


class FileStore:
    def __init__(self, store: Any, blobs: DiskBlobs, clock: Clock, settings: Settings) -> None:
        self._store = store
        self.blobs = blobs
        self._clock = clock
        self._settings = settings

    async def upload(self, owner: str, filename: str, purpose: str, data: bytes) -> dict:
        if purpose not in UPLOAD_PURPOSES:
            raise invalid(
                f"purpose {purpose[:40]!r} is not kept here; this proxy takes 'batch' (JSONL "
                "batch inputs), 'vision' and 'user_data' (reference images for batch lines)",
                param="purpose",
            )
        limit = self._settings.files_max_bytes
        if len(data) > limit:
            raise too_large(f"the file is {len(data)} bytes; the limit is {limit}", param="file")
        if not data:
            raise invalid("the file is empty", param="file")
        if purpose == "batch":
            content_type = "application/jsonl"
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise invalid("a batch file must be UTF-8 JSONL", param="file") from None
        else:
            content_type = sniff_mime(data)
            if not content_type.startswith("image/"):
                raise invalid(f"a {purpose} file must be a PNG, JPEG or WebP image", param="file")
        return await self._put(
            owner, filename, purpose, data, content_type, self._settings.files_ttl_seconds
        )

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
        now = self._clock.now()
        file_id = file_id or f"file-{secrets.token_hex(12)}"
        doc = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
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
        await self.blobs.put_blob(file_id, data, content_type, ttl)  # contents first: a
        await self._store.put_doc(FILE_KIND, file_id, doc)  # listed file always has them
        return doc

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
