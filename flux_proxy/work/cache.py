"""The seeded cache: a request that fixes `seed` is deterministic for its model, prompt,
parameters and reference images, so an identical one is answered from the stored image.

Content-addressed by `Fingerprint.image(seed)` and kept in the state store (`cache_*`
operations: memory, SQLite, Redis), so replicas share it and SQLite keeps it across restarts.
Identical requests in flight at once make one call (single flight): the first holds a marker
(`claim`, SET NX PX on Redis) and the others wait for its entry, on this replica through a
local future, on another by polling the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from flux_proxy.job import GeneratedImage
from flux_proxy.logs import log_event
from flux_proxy.store.base import StateStore
from flux_proxy.work.results import decode_image, encode_image

POLL_SECONDS = 0.25  # how often a waiter on another replica's flight looks again


class CachePolicy(StrEnum):
    USE = "use"  # read, and write what was made
    REFRESH = "refresh"  # `Cache-Control: no-cache`: make anew, then replace the entry
    BYPASS = "bypass"  # `Cache-Control: no-store`: neither read nor write

    @classmethod
    def from_header(cls, value: str | None) -> CachePolicy:
        if not value:
            return cls.USE
        directives = {part.strip().split("=", 1)[0].lower() for part in value.split(",")}
        if "no-store" in directives:
            return cls.BYPASS
        if "no-cache" in directives:
            return cls.REFRESH
        return cls.USE


class SeededCache:
    def __init__(self, store: StateStore, *, ttl: float, max_bytes: int, holder: str) -> None:
        self.store = store
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.holder = holder
        self._flights: dict[str, asyncio.Future[GeneratedImage | None]] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_bytes > 0

    async def get(self, key: str) -> GeneratedImage | None:
        data = await self.store.cache_get(key)
        return None if data is None else decode_image(data)

    async def put(self, key: str, image: GeneratedImage) -> None:
        await self.store.cache_put(key, encode_image(image), self.ttl, self.max_bytes)

    async def stats(self) -> dict:
        stats = await self.store.cache_stats()
        return {**stats, "max_bytes": self.max_bytes, "ttl_seconds": self.ttl}

    async def single_flight(
        self,
        key: str,
        make: Callable[[], Awaitable[GeneratedImage]],
        *,
        wait_limit: float,
        on_wait: Callable[[], None] = lambda: None,
    ) -> tuple[GeneratedImage, bool]:
        """The image for `key`: another flight's (True: no call made here) or our own `make()`
        (False), which is then cached. At most one flight per key makes the call: the local
        leader registers before its first await, so no two requests here both lead.
        `on_wait` is called when this has to wait for another flight."""
        while (flight := self._flights.get(key)) is not None:
            on_wait()
            image = await asyncio.shield(flight)
            if image is not None:
                return image, True
            # That flight failed: lead one of our own (only the first waiter gets to).
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        marker = "flight:" + key
        claimed = False
        result: GeneratedImage | None = None
        try:
            found, claimed = await self._claim_or_wait(key, marker, wait_limit, on_wait)
            if found is not None:
                result = found
                return found, True
            result = await make()
            try:
                await self.put(key, result)
            except Exception as exc:  # the image is paid for and goes out; only caching failed
                log_event("cache_put_failed", logging.WARNING, error=type(exc).__name__)
            return result, False
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.set_result(result)
            if claimed:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.unclaim(marker, self.holder))

    async def _claim_or_wait(
        self, key: str, marker: str, limit: float, on_wait: Callable[[], None]
    ) -> tuple[GeneratedImage | None, bool]:
        """Take the flight marker (one store round trip when nobody holds it), or, while
        another process holds it, poll for its entry (`on_wait` is told). Returns (its image,
        False) when that came; (None, True) when we hold the marker; (None, False) when we
        lead without it (our own process's old marker, or the wait ran out)."""
        give_up = time.monotonic() + limit  # a wait, like the slots': not wall time
        while True:
            holder = await self.store.claim(marker, self.holder, limit)
            if holder is None:
                return None, True
            if holder == self.holder or time.monotonic() >= give_up:
                return None, False
            on_wait()
            await asyncio.sleep(POLL_SECONDS)
            found = await self.get(key)
            if found is not None:
                return found, False
