"""The shared work queue: one Redis Stream per kind, one consumer group, leases by idle time.

- `put`: `XADD {prefix}queue:{kind} * id <entry_id> payload <bytes>`.
- `claim`: first `XAUTOCLAIM` (entries idle in another consumer's pending list for longer than
  the lease: that consumer died, or released them), then `XREADGROUP ... >` for a new one.
  The delivery count Redis keeps per pending entry is the `attempt`.
- `renew`: `XCLAIM ... 0 <id> JUSTID` by the holder resets the entry's idle time; a Lua script
  checks the holder first, so a consumer that lost the entry cannot take it back.
- `release`: the same, with an idle time far past any lease, so the next `XAUTOCLAIM` takes it.
- `ack`: `XACK` and `XDEL` in one transaction, so the stream holds only unfinished entries.

Needs Redis >= 6.2 (`XAUTOCLAIM`). Idle time is Redis's own clock (milliseconds), so leases
here are real seconds, whatever clock the app was given. Consumers should have names unique
per process.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from flux_proxy.store.redis import redis_client
from flux_proxy.work.queue import Delivery

GROUP = "workers"
SOCKET_TIMEOUT = 2.0
RELEASED_IDLE_MS = 10**12  # "idle for 31 years": past any lease, taken by the next claim

# ARGV: group, entry id, consumer, idle ms. The holder's own XCLAIM (JUSTID: the delivery
# count stays) sets the idle time: 0 to renew, RELEASED_IDLE_MS to release.
_HOLDER_RECLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""


class RedisQueue:
    name = "redis"

    def __init__(
        self, url: str, prefix: str = "flux-proxy:", *, socket_timeout: float = SOCKET_TIMEOUT
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._socket_timeout = socket_timeout
        self._redis: aioredis.Redis | None = None
        self._reclaim: AsyncScript | None = None
        self._groups: set[str] = set()  # streams whose group this process already made

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("RedisQueue used before open()")
        return self._redis

    def _stream(self, kind: str) -> str:
        return f"{self.prefix}queue:{kind}"

    async def open(self) -> None:
        if self._redis is None:
            self._redis = redis_client(self.url, self._socket_timeout)
            self._reclaim = self._redis.register_script(_HOLDER_RECLAIM)
        await self._redis.ping()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups:
            return
        try:
            # From id 0: entries added before the group existed are delivered too.
            await self._client().xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def put(self, kind: str, entry_id: str, payload: bytes) -> None:
        stream = self._stream(kind)
        await self._ensure_group(stream)
        await self._client().xadd(stream, {"id": entry_id, "payload": bytes(payload)})

    async def claim(self, kind: str, consumer: str, lease: float) -> Delivery | None:
        stream = self._stream(kind)
        await self._ensure_group(stream)
        try:
            return await self._claim(kind, stream, consumer, lease)
        except ResponseError as exc:
            # A Redis that came back empty (no persistence, a flush, failover to an empty
            # replica) lost the group this process made; make it again rather than fail
            # every claim from now on.
            if "NOGROUP" not in str(exc):
                raise
            self._groups.discard(stream)
            await self._ensure_group(stream)
            return await self._claim(kind, stream, consumer, lease)

    async def _claim(self, kind: str, stream: str, consumer: str, lease: float) -> Delivery | None:
        client = self._client()
        lease_ms = max(1, math.ceil(lease * 1000))
        cursor = "0-0"
        while True:
            # XAUTOCLAIM scans a bounded slice of the pending list per call; follow the cursor
            # until it wraps to 0-0 so a stale entry behind many live ones is still found.
            reply = await client.xautoclaim(
                stream, GROUP, consumer, lease_ms, start_id=cursor, count=1
            )
            cursor, claimed = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []  # Redis 7 lists vanished entries
            if deleted:  # pending ids whose entries are gone: nothing left to do for them
                await client.xack(stream, GROUP, *deleted)
            if claimed:
                message_id, fields = claimed[0]
                pending = await client.xpending_range(
                    stream, GROUP, min=message_id, max=message_id, count=1
                )
                attempt = int(pending[0]["times_delivered"]) if pending else 2
                return _delivery(kind, message_id, fields, attempt, consumer)
            if _text(cursor) == "0-0":
                break
        replies = await client.xreadgroup(GROUP, consumer, {stream: ">"}, count=1)
        for _, messages in replies or []:
            for message_id, fields in messages:
                return _delivery(kind, message_id, fields, 1, consumer)
        return None

    async def _holder_reclaim(self, delivery: Delivery, idle_ms: int) -> bool:
        assert self._reclaim is not None
        done = await self._reclaim(
            keys=[self._stream(delivery.kind)],
            args=[GROUP, delivery.receipt, delivery.consumer, idle_ms],
        )
        return int(done) == 1

    async def renew(self, delivery: Delivery, lease: float) -> bool:
        return await self._holder_reclaim(delivery, 0)

    async def release(self, delivery: Delivery) -> None:
        await self._holder_reclaim(delivery, RELEASED_IDLE_MS)

    async def ack(self, delivery: Delivery) -> None:
        stream = self._stream(delivery.kind)
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.xack(stream, GROUP, delivery.receipt)
            pipe.xdel(stream, delivery.receipt)
            await pipe.execute()

    async def depth(self, kind: str) -> int:
        return int(await self._client().xlen(self._stream(kind)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _delivery(kind: str, message_id, fields: dict, attempt: int, consumer: str) -> Delivery:
    return Delivery(
        kind=kind,
        entry_id=_text(fields[b"id"]),
        payload=bytes(fields[b"payload"]),
        attempt=attempt,
        consumer=consumer,
        receipt=_text(message_id),
    )
