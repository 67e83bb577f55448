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
import contextlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import BinaryIO

from flux_proxy.clock import Clock

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_TEMP_PREFIX = ".tmp-"  # never a blob's name: `_path` refuses keys that start with "."
STALE_TEMP_SECONDS = 86400.0  # far longer than any upload or write takes


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

    def spool_path(self) -> Path:
        """A fresh temporary name beside the blobs, for an upload streaming in: keeping it is
        then a rename (`adopt`), and `sweep` removes one a crash left behind."""
        return self.root / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"

    async def adopt(self, key: str, spooled: Path, content_type: str, ttl: float) -> None:
        """Make the (already synced) file `spooled` the blob `key`, by renaming it."""
        meta = {"content_type": content_type, "expires_at": self._clock.now() + ttl}
        await asyncio.to_thread(self._adopt, self._path(key), spooled, meta)

    def _adopt(self, path: Path, spooled: Path, meta: dict) -> None:
        os.replace(spooled, path)
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

    async def open_blob(self, key: str) -> tuple[BinaryIO, str] | None:
        """The blob opened for reading (the caller closes it) and its content type, or None
        when missing or expired. An open file reads on even if the blob is deleted now."""
        try:
            path = self._path(key)
        except ValueError:
            return None
        return await asyncio.to_thread(self._open, path, self._clock.now())

    def _open(self, path: Path, now: float) -> tuple[BinaryIO, str] | None:
        try:
            meta = json.loads(path.with_name(path.name + ".meta").read_bytes())
            if meta["expires_at"] <= now:
                return None
            return path.open("rb"), meta["content_type"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    async def read_range(self, key: str, offset: int, length: int) -> bytes | None:
        """`length` bytes of the blob from `offset` (a batch's big line), or None when the
        blob is missing or expired; reads only those bytes."""
        try:
            path = self._path(key)
        except ValueError:
            return None
        return await asyncio.to_thread(self._read_range, path, offset, length, self._clock.now())

    def _read_range(self, path: Path, offset: int, length: int, now: float) -> bytes | None:
        opened = self._open(path, now)
        if opened is None:
            return None
        with opened[0] as data:
            data.seek(offset)
            return data.read(length)

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
        for temp in self.root.glob(f"{_TEMP_PREFIX}*"):
            # Left by a process killed mid-write or mid-upload (the clock is wall time here).
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < time.time() - STALE_TEMP_SECONDS:
                    temp.unlink()
        return removed


def _replace(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
    with temp.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def discard(path: Path) -> None:
    """Remove a spooled upload that is not kept. Synchronous on purpose: it must also run
    while its task is being cancelled (a client gone mid-upload), and an unlink is quick."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _unlink_pair(path: Path) -> None:
    path.with_name(path.name + ".meta").unlink(missing_ok=True)
    path.unlink(missing_ok=True)
