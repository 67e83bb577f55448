"""The keys the proxy accepts right now: `API_MASTER_KEY` keys (admins named `master`,
`master-2`, ...) plus the named keys of `API_KEYS_FILE`, reloaded without a restart.

Only SHA-256 digests are held. A presented key is hashed once and compared with every digest
by `hmac.compare_digest`, with no early exit, so neither timing nor the number of comparisons
tells which key (or how much of one) matched. A reload swaps the whole list in one
assignment: a request sees the old keys or the new ones, never half of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from flux_proxy.api.caller import Caller, master_key_name
from flux_proxy.keys.keyfile import KeysFileError, NamedKey, digest_of, read_keys_file
from flux_proxy.logs import log_event
from flux_proxy.settings import ConfigError, Settings

Stamp = tuple[int, int, int] | None  # (mtime_ns, size, inode) of the keys file


def _stamp(path: Path) -> Stamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class KeyRing:
    def __init__(
        self,
        master_keys: list[str],
        keys_file: Path | None = None,
        settings: Settings | None = None,
    ) -> None:
        if keys_file is not None and settings is None:
            raise ValueError("a keys file needs the settings (model names, reload interval)")
        self.settings = settings
        self.path = keys_file
        keys = master_keys
        self._masters = [
            NamedKey(digest_of(key), Caller(master_key_name(i, len(keys)), "admin"), False)
            for i, key in enumerate(keys)
        ]
        self._entries: list[NamedKey] = list(self._masters)
        self._stamp: Stamp = None
        self._failed_stamp: Stamp = None
        if self.path is not None:
            try:
                self._load()
            except KeysFileError as error:
                raise ConfigError(f"API_KEYS_FILE: {error}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.master_keys, settings.api_keys_file, settings)

    # --- who is calling ----------------------------------------------------------------------
    def caller_for(self, presented: str) -> Caller | None:
        """The caller whose key this is, or None. Every digest is compared, always."""
        candidate = digest_of(presented)
        found: Caller | None = None
        for entry in self._entries:
            if hmac.compare_digest(candidate, entry.digest) and found is None:
                found = entry.caller
        return found

    def caller_named(self, name: str) -> Caller | None:
        """The key called `name` as loaded now (for entry points that carry only the name)."""
        for entry in self._entries:
            if entry.caller.name == name:
                return entry.caller
        return None

    @property
    def names(self) -> list[str]:
        return [entry.caller.name for entry in self._entries]

    # --- loading -----------------------------------------------------------------------------
    def _load(self) -> None:
        assert self.path is not None
        stamp = _stamp(self.path)
        assert self.settings is not None
        named = read_keys_file(self.path, self.settings)
        masters = {entry.digest for entry in self._masters}
        for entry in named:
            if entry.digest in masters:
                raise KeysFileError(f"key {entry.caller.name!r} is also an API_MASTER_KEY key")
        self._entries = [*self._masters, *named]
        self._stamp = stamp
        self._failed_stamp = None
        for entry in named:
            if entry.plain:
                log_event(
                    "keys_file_plain_key",
                    logging.WARNING,
                    key_name=entry.caller.name,
                    detail="stored in clear; replace `key` by `key_sha256` "
                    "(`flux-proxy keys new` prints one)",
                )
        log_event("keys_loaded", file=str(self.path), keys=len(named), names=self.names)

    def reload(self, why: str) -> bool:
        """Load the file again. A bad file keeps the keys in use and logs why (once per
        version of the file, not on every poll)."""
        if self.path is None:
            return False
        try:
            self._load()
        except KeysFileError as error:
            stamp = _stamp(self.path)
            if stamp != self._failed_stamp or why == "sighup":
                self._failed_stamp = stamp
                log_event(
                    "keys_reload_failed",
                    logging.ERROR,
                    file=str(self.path),
                    trigger=why,
                    error=str(error),
                    detail="still using the keys loaded before",
                )
            return False
        log_event("keys_reloaded", trigger=why, keys=len(self._entries) - len(self._masters))
        return True

    def reload_if_changed(self) -> bool:
        if self.path is None:
            return False
        stamp = _stamp(self.path)
        if stamp == self._stamp or stamp == self._failed_stamp:
            return False
        return self.reload("file_changed")

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """While inside: reload when the file changes (mtime poll) and on SIGHUP."""
        if self.path is None:
            yield
            return
        loop = asyncio.get_running_loop()
        hup = False
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # Only the main thread may take signals (tests run servers in other threads).
            loop.add_signal_handler(signal.SIGHUP, self.reload, "sighup")
            hup = True
        task = asyncio.create_task(self._poll(), name="keys-file-poll")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)

    async def _poll(self) -> None:
        while True:
            assert self.settings is not None
            await asyncio.sleep(self.settings.keys_reload_seconds)
            self.reload_if_changed()
