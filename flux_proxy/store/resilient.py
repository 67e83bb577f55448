"""Redis with a local safety net: when Redis goes away, the proxy keeps serving.

While Redis answers, every call goes to it, and what this replica learns (blocks, spend,
blocks and usage it reads) is mirrored into a local MemoryStore, so the net already knows the
last shared view when it is needed. When a call fails with a connection error or timeout,
the store logs once, switches to the local store and tries Redis again at most every
`retry_interval` seconds. When Redis is back, it pushes what it learned during the outage
(blocks set or cleared, spend added, images stored) and resumes using Redis.

Reservations made on the local store are settled or released there (Redis never saw them);
their spend is then shared like any other.

This module holds the switching, the recovery and the accounts' core (blocks, the neuron
ledger, blobs); each later feature is a mixin of its own: `resilient_work.py` (markers, kept
results, the seeded cache, local while Redis is away), `resilient_jobs.py` and
`resilient_batches.py` (Redis only), `resilient_keys.py` (key quotas and usage).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flux_proxy.clock import Clock
from flux_proxy.logs import log_event
from flux_proxy.store.base import Block, Reservation, Usage, UsageRow
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.redis import RedisStore
from flux_proxy.store.resilient_batches import ResilientBatches
from flux_proxy.store.resilient_jobs import ResilientJobs
from flux_proxy.store.resilient_keys import ResilientKeys
from flux_proxy.store.resilient_work import ResilientWork

T = TypeVar("T")

# What "Redis cannot serve us" looks like: redis-py's connection errors and timeouts, the
# OS-level ones, and a Redis that answers but refuses writes (a replica after failover, OOM).
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
)

DEGRADED_DETAIL = "redis unreachable; serving from local state"


class ResilientStore(ResilientWork, ResilientJobs, ResilientBatches, ResilientKeys):
    name = "redis"

    def __init__(
        self,
        primary: RedisStore,
        fallback: MemoryStore,
        *,
        clock: Clock | None = None,
        retry_interval: float = 5.0,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._clock = clock or primary.clock
        self.retry_interval = retry_interval
        self._healthy = True
        self._retry_at = 0.0
        self._recovering = False
        self._local_reservations: set[str] = set()
        # What this replica learned while Redis was away, to push when it returns.
        self._outage_blocks: dict[str, Block | None] = {}  # None: cleared
        self._outage_spend: dict[tuple[str, str], float] = {}
        self._outage_blobs: dict[str, float] = {}  # key -> expires_at
        self._local_key_holds: set[str] = set()
        self._outage_usage: list[tuple[list[UsageRow], int]] = []  # (rows, keep_days)

    @property
    def degraded(self) -> bool:
        return not self._healthy

    # --- switching --------------------------------------------------------------------------
    async def _on_primary(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run `call` on Redis if it is (or is back) up: (True, result), else (False, None)."""
        await self._maybe_recover()
        if not self._healthy:
            return False, None
        try:
            return True, await call()
        except UNREACHABLE as exc:
            self._degrade(exc)
            return False, None

    def _degrade(self, exc: BaseException) -> None:
        self._retry_at = self._clock.now() + self.retry_interval
        if not self._healthy:
            return
        self._healthy = False
        log_event(
            "state_store_unreachable",
            level=logging.WARNING,
            backend="redis",
            redis=self.primary.safe_url,
            error=type(exc).__name__,
            retry_every=self.retry_interval,
            detail=DEGRADED_DETAIL,
        )

    async def _maybe_recover(self) -> None:
        if self._healthy or self._recovering or self._clock.now() < self._retry_at:
            return
        self._recovering = True
        try:
            await self.primary.ping()
            pushed = await self._resync()
        except Exception:
            # Whatever went wrong, keep serving locally; what was not pushed stays queued.
            self._retry_at = self._clock.now() + self.retry_interval
            return
        finally:
            self._recovering = False
        # No await between the last push and this line: nothing learned locally is missed.
        self._healthy = True
        log_event("state_store_recovered", backend="redis", redis=self.primary.safe_url, **pushed)

    async def _resync(self) -> dict[str, int]:
        """Push what was learned during the outage; each item leaves the queue only once sent."""
        pushed = {"blocks": 0, "spend_entries": 0, "blobs": 0, "usage_entries": 0}
        while self._outage_blocks or self._outage_spend or self._outage_blobs or self._outage_usage:
            if self._outage_usage:
                rows, keep_days = self._outage_usage.pop()
                try:
                    await self.primary.record_usage(rows, keep_days)
                except BaseException:
                    self._outage_usage.append((rows, keep_days))
                    raise
                pushed["usage_entries"] += 1
            elif self._outage_blocks:
                account, block = self._outage_blocks.popitem()
                try:
                    if block is None:
                        await self.primary.clear_block(account)
                    else:
                        await self.primary.set_block(account, block)
                except BaseException:
                    self._outage_blocks.setdefault(account, block)  # unless newer news came
                    raise
                pushed["blocks"] += 1
            elif self._outage_spend:
                (account, day), amount = self._outage_spend.popitem()
                try:
                    await self.primary.record_spend(account, day, amount)
                except BaseException:
                    self._add_outage_spend(account, day, amount)
                    raise
                pushed["spend_entries"] += 1
            else:
                key, expires_at = self._outage_blobs.popitem()
                blob = await self.fallback.get_blob(key)
                remaining = expires_at - self._clock.now()
                if blob is None or remaining <= 0:
                    continue
                try:
                    await self.primary.put_blob(key, blob[0], blob[1], remaining)
                except BaseException:
                    self._outage_blobs.setdefault(key, expires_at)
                    raise
                pushed["blobs"] += 1
        return pushed

    def _add_outage_spend(self, account: str, day: str, amount: float) -> None:
        key = (account, day)
        self._outage_spend[key] = self._outage_spend.get(key, 0.0) + amount

    async def _share_spend(self, account: str, day: str, amount: float) -> None:
        """Spend the local store already knows: send it to Redis, or queue it for later."""
        ok, _ = await self._on_primary(lambda: self.primary.record_spend(account, day, amount))
        if not ok:
            self._add_outage_spend(account, day, amount)

    # --- lifecycle --------------------------------------------------------------------------
    async def open(self) -> None:
        await self.fallback.open()
        try:
            await self.primary.open()
        except UNREACHABLE as exc:
            self._degrade(exc)  # start on local state; retry later

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()

    # --- blocks -----------------------------------------------------------------------------
    async def get_blocks(self, accounts: list[str]) -> dict[str, Block]:
        ok, blocks = await self._on_primary(lambda: self.primary.get_blocks(accounts))
        if not ok or blocks is None:
            return await self.fallback.get_blocks(accounts)
        # Mirror the shared view, so an outage starts from what the other replicas knew.
        for account in accounts:
            if account in blocks:
                await self.fallback.set_block(account, blocks[account])
            else:
                await self.fallback.clear_block(account)
        return blocks

    async def set_block(self, account: str, block: Block) -> None:
        await self.fallback.set_block(account, block)
        ok, _ = await self._on_primary(lambda: self.primary.set_block(account, block))
        if not ok:
            self._outage_blocks[account] = block

    async def clear_block(self, account: str) -> None:
        await self.fallback.clear_block(account)
        ok, _ = await self._on_primary(lambda: self.primary.clear_block(account))
        if not ok:
            self._outage_blocks[account] = None

    # --- neuron ledger ----------------------------------------------------------------------
    async def try_reserve(
        self, account: str, day: str, amount: float, budget: float | None, ttl: float
    ) -> Reservation | None:
        ok, reservation = await self._on_primary(
            lambda: self.primary.try_reserve(account, day, amount, budget, ttl)
        )
        if ok:
            return reservation
        reservation = await self.fallback.try_reserve(account, day, amount, budget, ttl)
        if reservation is not None:
            self._local_reservations.add(reservation.id)
        return reservation

    async def settle(self, reservation: Reservation, actual: float) -> None:
        if reservation.id in self._local_reservations:
            self._local_reservations.discard(reservation.id)
            await self.fallback.settle(reservation, actual)
            await self._share_spend(reservation.account, reservation.day, actual)
            return
        ok, _ = await self._on_primary(lambda: self.primary.settle(reservation, actual))
        if ok:
            await self.fallback.record_spend(reservation.account, reservation.day, actual)
        else:
            # Count the spend locally; the hold in Redis lapses by its ttl.
            await self.fallback.record_spend(reservation.account, reservation.day, actual)
            self._add_outage_spend(reservation.account, reservation.day, actual)

    async def release(self, reservation: Reservation) -> None:
        if reservation.id in self._local_reservations:
            self._local_reservations.discard(reservation.id)
            await self.fallback.release(reservation)
            return
        # If Redis is away, its hold lapses by its ttl; nothing to remember.
        await self._on_primary(lambda: self.primary.release(reservation))

    async def record_spend(self, account: str, day: str, amount: float) -> None:
        await self.fallback.record_spend(account, day, amount)
        await self._share_spend(account, day, amount)

    async def usage(self, accounts: list[str], day: str) -> dict[str, Usage]:
        ok, shared = await self._on_primary(lambda: self.primary.usage(accounts, day))
        if not ok or shared is None:
            return await self.fallback.usage(accounts, day)
        # Mirror spend other replicas recorded, so the local view never lags behind it.
        local = await self.fallback.usage(accounts, day)
        for account, seen in shared.items():
            behind = seen.used - local[account].used
            if behind > 0:
                await self.fallback.record_spend(account, day, behind)
        return shared

    # --- blobs ------------------------------------------------------------------------------
    async def put_blob(self, key: str, data: bytes, content_type: str, ttl: float) -> None:
        ok, _ = await self._on_primary(lambda: self.primary.put_blob(key, data, content_type, ttl))
        if not ok:
            await self.fallback.put_blob(key, data, content_type, ttl)
            self._outage_blobs[key] = self._clock.now() + ttl

    async def get_blob(self, key: str) -> tuple[bytes, str] | None:
        ok, blob = await self._on_primary(lambda: self.primary.get_blob(key))
        if ok and blob is not None:
            return blob
        # Not in Redis (or Redis away): it may have been stored here during an outage.
        return await self.fallback.get_blob(key)

    # --- health -----------------------------------------------------------------------------
    async def status(self) -> dict:
        ok, _ = await self._on_primary(self.primary.ping)
        if not ok:
            # Still serving: readiness must not take every replica out during an outage.
            return {"backend": self.name, "ok": False, "serving": True, "detail": DEGRADED_DETAIL}
        return {"backend": self.name, "ok": True, "detail": self.primary.detail}
