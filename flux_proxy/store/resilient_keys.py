"""The resilient store's key quotas and usage section.

While Redis answers it holds the quotas and rows, and what this replica adds is mirrored
locally. During an outage each replica enforces quotas on what it knows itself (its own
mirror), so replicas together may pass a limit by what the others served meanwhile; the
rows it adds are pushed to Redis when it returns, so usage history loses nothing.

Mixed into `ResilientStore`, whose `_on_primary` runs a call on Redis if it is (or is back)
up, with `primary` (RedisStore) and `fallback` (MemoryStore).
The holds made locally (`_local_key_holds`) and the rows queued for Redis (`_outage_usage`)
are `ResilientStore`'s, whose `_resync` pushes the rows with the rest of the outage's news.
"""

from __future__ import annotations

from flux_proxy.store.base import KeyReservation, KeyUsage, UsageRow


class ResilientKeys:
    async def try_reserve_key(
        self,
        key: str,
        day: str,
        images: int,
        neurons: float,
        max_images: int | None,
        max_neurons: float | None,
        ttl: float,
    ) -> KeyReservation | None:
        ok, hold = await self._on_primary(
            lambda: self.primary.try_reserve_key(
                key, day, images, neurons, max_images, max_neurons, ttl
            )
        )
        if ok:
            return hold
        hold = await self.fallback.try_reserve_key(
            key, day, images, neurons, max_images, max_neurons, ttl
        )
        if hold is not None:
            self._local_key_holds.add(hold.id)
        return hold

    async def settle_key(
        self, reservation: KeyReservation, rows: list[UsageRow], keep_days: int
    ) -> None:
        if reservation.id in self._local_key_holds:
            self._local_key_holds.discard(reservation.id)
            await self.fallback.settle_key(reservation, rows, keep_days)
            self._outage_usage.append((rows, keep_days))
            return
        ok, _ = await self._on_primary(
            lambda: self.primary.settle_key(reservation, rows, keep_days)
        )
        await self.fallback.record_usage(rows, keep_days)
        if not ok:  # the hold in Redis lapses by its ttl
            self._outage_usage.append((rows, keep_days))

    async def release_key(self, reservation: KeyReservation) -> None:
        if reservation.id in self._local_key_holds:
            self._local_key_holds.discard(reservation.id)
            await self.fallback.release_key(reservation)
            return
        await self._on_primary(lambda: self.primary.release_key(reservation))

    async def record_usage(self, rows: list[UsageRow], keep_days: int) -> None:
        await self.fallback.record_usage(rows, keep_days)
        ok, _ = await self._on_primary(lambda: self.primary.record_usage(rows, keep_days))
        if not ok:
            self._outage_usage.append((rows, keep_days))

    async def key_usage(self, key: str, day: str) -> KeyUsage:
        ok, seen = await self._on_primary(lambda: self.primary.key_usage(key, day))
        if ok and seen is not None:
            return seen
        return await self.fallback.key_usage(key, day)

    async def usage_rows(
        self, first_day: str, last_day: str, key: str | None = None
    ) -> list[UsageRow]:
        ok, rows = await self._on_primary(lambda: self.primary.usage_rows(first_day, last_day, key))
        if ok and rows is not None:
            return rows
        return await self.fallback.usage_rows(first_day, last_day, key)
