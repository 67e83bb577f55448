"""Blobs as plain files under one directory (`DATA_DIR/files/`): uploaded files, batch output
and error files, and the images that batch answers link to.

Kept out of the state store on purpose: a batch's inputs and outputs run to hundreds of
megabytes, which belong on a disk, not in Redis. Replicas that share batches (REDIS_URL) must
therefore share this directory (one volume mounted at the same DATA_DIR). Each blob is its
data file plus a small `.meta` JSON (content type, expiry) written after it, both through a
temporary file and `os.replace`, so a reader never sees half a blob, even after `kill -9`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path

from flux_proxy.clock import Clock

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class DiskBlobs:
    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = Path(root)
        self._clock = clock

    def _path(self, key: str) -> Path:
        name = _UNSAFE.sub("_", key)
        if not name or name.startswith("."):
            raise ValueError("unusable blob key")
        return self.root / name

    async def put_blob(self, key: str, data: bytes, content_type: str, ttl: float) -> None:
        meta = {"content_type": content_type, "expires_at": self._clock.now() + ttl}
        await asyncio.to_thread(self._write, self._path(key), data, meta)

    def _write(self, path: Path, data: bytes, meta: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _replace(path, data)
        _replace(path.with_name(path.name + ".meta"), json.dumps(meta).encode())

    async def get_blob(self, key: str) -> tuple[bytes, str] | None:
        """The blob and its content type, or None when missing or expired."""
        try:
            path = self._path(key)
        except ValueError:
            return None
        return await asyncio.to_thread(self._read, path, self._clock.now())

    def _read(self, path: Path, now: float) -> tuple[bytes, str] | None:
        try:
            meta = json.loads(path.with_name(path.name + ".meta").read_bytes())
            if meta["expires_at"] <= now:
                return None
            return path.read_bytes(), meta["content_type"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await asyncio.to_thread(_unlink_pair, path)

    async def sweep(self) -> int:
        """Delete expired blobs; returns how many went."""
        return await asyncio.to_thread(self._sweep, self._clock.now())

    def _sweep(self, now: float) -> int:
        if not self.root.is_dir():
            return 0
        removed = 0
        for meta_path in self.root.glob("*.meta"):
            try:
                expires_at = json.loads(meta_path.read_bytes())["expires_at"]
            except (FileNotFoundError, ValueError, KeyError):
                continue
            if expires_at <= now:
                _unlink_pair(meta_path.with_name(meta_path.name.removesuffix(".meta")))
                removed += 1
        return removed


def _replace(path: Path, data: bytes) -> None:
    temp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    with temp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def _unlink_pair(path: Path) -> None:
    path.with_name(path.name + ".meta").unlink(missing_ok=True)
    path.unlink(missing_ok=True)
