"""Redis with a local safety net: when Redis goes away, the proxy keeps serving.

While Redis answers, every call goes to it, and what this replica learns (blocks, spend,
blocks and usage it reads) is mirrored into a local MemoryStore, so the net already knows the
last shared view when it is needed. When a call fails with a connection error or timeout,
the store logs once, switches to the local store and tries Redis again at most every
`retry_interval` seconds. When Redis is back, it pushes what it learned during the outage
(blocks set or cleared, spend added, images stored) and resumes using Redis.

Reservations made on the local store are settled or released there (Redis never saw them);
their spend is then shared like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError
from flux_proxy.logs import log_event
from flux_proxy.store.base import (
    Block,
    JobRecord,
    KeyReservation,
    KeyUsage,
    LineClaim,
    Reservation,
    StoreUnavailable,
    Usage,
    UsageRow,
)
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.redis import RedisStore

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


class ResilientStore:
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

    # --- key quotas and usage ---------------------------------------------------------------
    # While Redis answers it holds the quotas and rows, and what this replica adds is mirrored
    # locally. During an outage each replica enforces quotas on what it knows itself (its own
    # mirror), so replicas together may pass a limit by what the others served meanwhile; the
    # rows it adds are pushed to Redis when it returns, so usage history loses nothing.
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

    # --- work ---
    # Markers, results and cache entries go to Redis while it answers and to the local store
    # while it does not. Nothing of them is pushed back on recovery: a marker or a kept result
    # matters for minutes, and what this replica holds locally is still found here (reads fall
    # back to the local store on a miss).
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

    # --- jobs ---
    # Jobs live in Redis only: one kept in this replica's memory would be invisible to the
    # others and gone with a restart, which is what a durable job promises not to be. While
    # Redis is away, job calls fail with a 503 (a caller can still make images synchronously).
    async def _jobs_on_primary(self, call: Callable[[], Awaitable[T]]) -> T:
        ok, result = await self._on_primary(call)
        if not ok:
            raise ApiError(
                503,
                "async jobs are unavailable while the shared state store is unreachable",
                code="job_store_unavailable",
            )
        return result  # type: ignore[return-value]

    async def put_job(self, job: JobRecord, ttl: float) -> None:
        await self._jobs_on_primary(lambda: self.primary.put_job(job, ttl))

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._jobs_on_primary(lambda: self.primary.get_job(job_id))

    async def swap_job(self, job: JobRecord, expect: frozenset[str], ttl: float) -> bool:
        return bool(await self._jobs_on_primary(lambda: self.primary.swap_job(job, expect, ttl)))

    # --- health -----------------------------------------------------------------------------
    async def status(self) -> dict:
        ok, _ = await self._on_primary(self.primary.ping)
        if not ok:
            # Still serving: readiness must not take every replica out during an outage.
            return {"backend": self.name, "ok": False, "serving": True, "detail": DEGRADED_DETAIL}
        return {"backend": self.name, "ok": True, "detail": self.primary.detail}

    # --- batches and files (issue 10) ---------------------------------------------------------
    # A batch queue and its documents are shared by every replica; a local copy would let two
    # replicas run the same line or lose a result. So these go to Redis only, and while Redis
    # is away they raise StoreUnavailable: the Files/Batch API answers 503 and batch runners
    # pause, then carry on where the shared state says when Redis returns.

    async def _shared(self, call: Callable[[], Awaitable[T]]) -> T:
        ok, result = await self._on_primary(call)
        if not ok:
            raise StoreUnavailable("the shared state (Redis) is unreachable")
        return result  # type: ignore[return-value]

    async def put_doc(self, kind: str, doc_id: str, doc: dict) -> None:
        await self._shared(lambda: self.primary.put_doc(kind, doc_id, doc))

    async def get_doc(self, kind: str, doc_id: str) -> dict | None:
        return await self._shared(lambda: self.primary.get_doc(kind, doc_id))

    async def list_docs(self, kind: str) -> list[dict]:
        return await self._shared(lambda: self.primary.list_docs(kind))

    async def patch_doc(
        self, kind: str, doc_id: str, changes: dict, when: dict | None = None
    ) -> dict | None:
        return await self._shared(lambda: self.primary.patch_doc(kind, doc_id, changes, when))

    async def delete_doc(self, kind: str, doc_id: str) -> bool:
        return await self._shared(lambda: self.primary.delete_doc(kind, doc_id))

    async def add_lines(self, batch: str, payloads: list[str], ttl: float) -> None:
        await self._shared(lambda: self.primary.add_lines(batch, payloads, ttl))

    async def claim_line(self, batch: str, worker: str, lease: float) -> LineClaim | None:
        return await self._shared(lambda: self.primary.claim_line(batch, worker, lease))

    async def release_line(self, claim: LineClaim) -> None:
        await self._shared(lambda: self.primary.release_line(claim))

    async def finish_line(
        self, claim: LineClaim, outcome: str, result: str, neurons: float = 0.0
    ) -> dict | None:
        return await self._shared(lambda: self.primary.finish_line(claim, outcome, result, neurons))

    async def line_counts(self, batch: str) -> dict:
        return await self._shared(lambda: self.primary.line_counts(batch))

    async def line_results(self, batch: str) -> list[tuple[int, str, str]]:
        return await self._shared(lambda: self.primary.line_results(batch))

    async def drop_lines(self, batch: str) -> None:
        await self._shared(lambda: self.primary.drop_lines(batch))
