"""The resilient store's jobs section.

Jobs live in Redis only: one kept in this replica's memory would be invisible to the
others and gone with a restart, which is what a durable job promises not to be. While
Redis is away, job calls fail with a 503 (a caller can still make images synchronously).

Mixed into `ResilientStore`, whose `_on_primary` runs a call on Redis if it is (or is back)
up, with `primary` (RedisStore) and `fallback` (MemoryStore).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from flux_proxy.errors import ApiError
from flux_proxy.store.base import JobRecord

T = TypeVar("T")


class ResilientJobs:
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
