"""The durable work queue: entries that must be worked on exactly to the end, even across a
`kill -9`, a restart or a replica that dies.

Delivery is at-least-once with leases. `claim` hands an entry to one consumer for `lease`
seconds; the consumer `renew`s the lease while it works and `ack`s the entry when done. An
entry whose holder died (no renew within the lease) is handed out again, to any consumer, with
`attempt` one higher, so whoever does the work must make a repeat harmless (the job store's
compare-and-set does that for jobs). The queue knows nothing of images: an entry is an id,
a kind and opaque payload bytes.

Back-ends, picked by `open_queue` like the state store:
- `MemoryQueue` (tests, `STATE_BACKEND=memory`): in-process, forgotten on restart.
- `SqliteQueue` (`work/queue_sqlite.py`, the default): a table in the state file under
  `DATA_DIR`; a committed `put` survives `kill -9`. Several processes on one file share it.
- `RedisQueue` (`work/queue_redis.py`, shared state): one Redis Stream per kind with one
  consumer group, `XADD` / `XREADGROUP` / `XACK`, and `XAUTOCLAIM` to take over the entries of
  a consumer idle for longer than the lease.

API (every back-end passes `tests/test_queue_contract.py`):

    await queue.open() / await queue.close()
    await queue.put(kind, entry_id, payload) -> None
        Append an entry. `kind` names the line it waits in ("image_job", "batch:<id>", ...);
        `entry_id` is the caller's id (the queue does not check it is unique).
    await queue.claim(kind, consumer, lease) -> Delivery | None
        The oldest entry of `kind` that nobody holds (new, released, or whose holder's lease
        lapsed), now held by `consumer` for `lease` seconds; None when there is none. Never
        waits. All consumers of one kind must use the same lease (Redis decides a takeover by
        idle time).
    await queue.renew(delivery, lease) -> bool
        Extend the holder's lease; False when the entry is gone or another consumer took it.
    await queue.release(delivery) -> None
        Give the entry back unfinished: it can be claimed again at once.
    await queue.ack(delivery) -> None
        Done: the entry is removed for good (whoever holds it now).
    await queue.depth(kind) -> int
        Entries of `kind` not yet acked, held or not.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Protocol

from flux_proxy.clock import Clock
from flux_proxy.settings import ConfigError, Settings


@dataclass(frozen=True)
class Delivery:
    """An entry handed to one consumer."""

    kind: str
    entry_id: str
    payload: bytes
    attempt: int  # 1 on the first delivery; more when an earlier holder died or released it
    consumer: str  # who holds it (the consumer's name, with a per-claim tag on some back-ends)
    receipt: str  # the back-end's handle for this entry (a stream id, a row id)


class WorkQueue(Protocol):
    name: str  # "memory" | "sqlite" | "redis"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, kind: str, entry_id: str, payload: bytes) -> None: ...

    async def claim(self, kind: str, consumer: str, lease: float) -> Delivery | None: ...

    async def renew(self, delivery: Delivery, lease: float) -> bool: ...

    async def release(self, delivery: Delivery) -> None: ...

    async def ack(self, delivery: Delivery) -> None: ...

    async def depth(self, kind: str) -> int: ...


@dataclass
class _Entry:
    entry_id: str
    payload: bytes
    receipt: str
    attempts: int = 0
    holder: str | None = None
    lease_until: float = 0.0


class MemoryQueue:
    """In-process entries in put order; leases on the injected clock."""

    name = "memory"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or Clock()
        self._lock = asyncio.Lock()
        self._entries: dict[str, list[_Entry]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put(self, kind: str, entry_id: str, payload: bytes) -> None:
        async with self._lock:
            entry = _Entry(entry_id, bytes(payload), secrets.token_hex(8))
            self._entries.setdefault(kind, []).append(entry)

    async def claim(self, kind: str, consumer: str, lease: float) -> Delivery | None:
        async with self._lock:
            now = self._clock.now()
            # A holder tag per claim, as SqliteQueue has: a consumer that lost its lease cannot
            # renew or release the entry somebody else now holds.
            holder = f"{consumer} {secrets.token_hex(4)}"
            for entry in self._entries.get(kind, []):
                if entry.holder is None or entry.lease_until <= now:
                    entry.holder, entry.lease_until = holder, now + lease
                    entry.attempts += 1
                    return Delivery(
                        kind, entry.entry_id, entry.payload, entry.attempts, holder, entry.receipt
                    )
            return None

    def _find(self, delivery: Delivery) -> _Entry | None:
        for entry in self._entries.get(delivery.kind, []):
            if entry.receipt == delivery.receipt:
                return entry
        return None

    async def renew(self, delivery: Delivery, lease: float) -> bool:
        async with self._lock:
            entry = self._find(delivery)
            if entry is None or entry.holder != delivery.consumer:
                return False
            entry.lease_until = self._clock.now() + lease
            return True

    async def release(self, delivery: Delivery) -> None:
        async with self._lock:
            entry = self._find(delivery)
            if entry is not None and entry.holder == delivery.consumer:
                entry.holder, entry.lease_until = None, 0.0

    async def ack(self, delivery: Delivery) -> None:
        async with self._lock:
            entries = self._entries.get(delivery.kind, [])
            self._entries[delivery.kind] = [e for e in entries if e.receipt != delivery.receipt]

    async def depth(self, kind: str) -> int:
        return len(self._entries.get(kind, []))


QUEUE_FILE = "queue.sqlite3"


def open_queue(settings: Settings, clock: Clock) -> WorkQueue:
    """The queue for the configured state back-end (callers `open()` and `close()` it)."""
    backend = settings.resolved_state_backend
    if backend == "memory":
        return MemoryQueue(clock)
    if backend == "sqlite":
        from flux_proxy.work.queue_sqlite import SqliteQueue

        return SqliteQueue(settings.data_dir / QUEUE_FILE, clock)
    if backend == "redis":
        if not settings.redis_url:
            raise ConfigError("STATE_BACKEND=redis needs REDIS_URL")
        from flux_proxy.work.queue_redis import RedisQueue

        return RedisQueue(settings.redis_url, settings.redis_prefix)
    raise ConfigError(f"STATE_BACKEND={backend!r} is not memory, sqlite, redis or auto")
