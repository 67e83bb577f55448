"""The resilient store's work section: in-flight markers, kept results, the seeded cache.

Markers, results and cache entries go to Redis while it answers and to the local store
while it does not. Nothing of them is pushed back on recovery: a marker or a kept result
matters for minutes, and what this replica holds locally is still found here (reads fall
back to the local store on a miss).

Mixed into `ResilientStore`, whose `_on_primary` runs a call on Redis if it is (or is back)
up, with `primary` (RedisStore) and `fallback` (MemoryStore).
"""

from __future__ import annotations


class ResilientWork:
    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        ok, current = await self._on_primary(lambda: self.primary.claim(key, holder, ttl))
        if ok:
            return current
        return await self.fallback.claim(key, holder, ttl)

    async def holder_of(self, key: str) -> str | None:
        ok, current = await self._on_primary(lambda: self.primary.holder_of(key))
        if ok and current is not None:
            return current
        return await self.fallback.holder_of(key)

    async def unclaim(self, key: str, holder: str) -> None:
        await self.fallback.unclaim(key, holder)
        await self._on_primary(lambda: self.primary.unclaim(key, holder))

    async def put_result(self, key: str, data: bytes, ttl: float) -> None:
        ok, _ = await self._on_primary(lambda: self.primary.put_result(key, data, ttl))
        if not ok:
            await self.fallback.put_result(key, data, ttl)

    async def get_result(self, key: str) -> bytes | None:
        ok, data = await self._on_primary(lambda: self.primary.get_result(key))
        if ok and data is not None:
            return data
        return await self.fallback.get_result(key)

    async def cache_put(self, key: str, data: bytes, ttl: float, max_bytes: int) -> None:
        ok, _ = await self._on_primary(lambda: self.primary.cache_put(key, data, ttl, max_bytes))
        if not ok:
            await self.fallback.cache_put(key, data, ttl, max_bytes)

    async def cache_get(self, key: str) -> bytes | None:
        ok, data = await self._on_primary(lambda: self.primary.cache_get(key))
        if ok and data is not None:
            return data
        return await self.fallback.cache_get(key)

    async def cache_drop(self, key: str) -> None:
        await self.fallback.cache_drop(key)
        await self._on_primary(lambda: self.primary.cache_drop(key))

    async def cache_stats(self) -> dict:
        ok, stats = await self._on_primary(self.primary.cache_stats)
        if ok and stats is not None:
            return stats
        return await self.fallback.cache_stats()
