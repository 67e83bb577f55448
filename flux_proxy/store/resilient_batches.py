"""The resilient store's batches and files section (issue 10).

A batch queue and its documents are shared by every replica; a local copy would let two
replicas run the same line or lose a result. So these go to Redis only, and while Redis
is away they raise StoreUnavailable: the Files/Batch API answers 503 and batch runners
pause, then carry on where the shared state says when Redis returns.

Mixed into `ResilientStore`, whose `_on_primary` runs a call on Redis if it is (or is back)
up, with `primary` (RedisStore) and `fallback` (MemoryStore).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from flux_proxy.store.base import LineClaim, StoreUnavailable

T = TypeVar("T")


class ResilientBatches:
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
