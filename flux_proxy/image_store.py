"""Images kept for URL responses (`response_format=url`), over the state store's blobs.

A file name is a random id of 192 bits plus the extension, so the URL itself is the
credential: `/v1/images/files/<name>` needs no API key, like OpenAI's signed URLs. Files
expire after `ttl` seconds (the store forgets them; then the URL answers 404).
"""

from __future__ import annotations

import re
import secrets

from flux_proxy.store.base import StateStore

_KEY_PREFIX = "image:"
_NAME = re.compile(r"^[A-Za-z0-9_-]{32}\.(png|jpeg|webp|bin)$")


class ImageStore:
    def __init__(self, store: StateStore, ttl: float) -> None:
        self._store = store
        self._ttl = ttl

    async def put(self, data: bytes, content_type: str, extension: str) -> str:
        """Keep an image; returns its file name (`<id>.<ext>`)."""
        name = f"{secrets.token_urlsafe(24)}.{extension}"
        await self._store.put_blob(_KEY_PREFIX + name, data, content_type, self._ttl)
        return name

    async def get(self, name: str) -> tuple[bytes, str] | None:
        """The image and its content type, or None when unknown, malformed or expired."""
        if not _NAME.match(name):
            return None
        return await self._store.get_blob(_KEY_PREFIX + name)
