"""The shared state store: several replicas see one set of blocks, budgets and images in Redis.

Keys (all under the configured prefix, all with a TTL so nothing grows forever):
- `{prefix}block:{account}`       JSON Block; expires at `until` (no end: 30 days)
- `{prefix}usage:{account}:{day}` settled neurons (INCRBYFLOAT); 3 days
- `{prefix}res:{account}:{day}`   hash id -> "amount expires_at" of held reservations
- `{prefix}blob:{key}`            hash data/type/expires_at; the blob's ttl

This module holds the client, the scripts' registration and the accounts' core (blocks, the
neuron ledger, blobs); each later feature is a mixin of its own, with its Lua scripts and a
list of its keys: `redis_work.py` (markers, kept results, the seeded cache), `redis_jobs.py`,
`redis_batches.py` (documents and batch lines) and `redis_keys.py` (key quotas and usage).

Budget checks run as Lua scripts, so check-and-reserve is one atomic step across replicas.
Time comes from the injected clock, passed into the scripts, not from Redis TIME: replicas
already agree on wall time closely enough, and tests can move a FrozenClock.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from flux_proxy.clock import Clock
from flux_proxy.store.base import Block, Reservation, Usage
from flux_proxy.store.redis_batches import FINISH_LINE, LINE_GROUP, RELEASE_LINE, RedisBatches
from flux_proxy.store.redis_jobs import SWAP_JOB, RedisJobs
from flux_proxy.store.redis_keys import ADD_USAGE, RESERVE_KEY, RedisKeys
from flux_proxy.store.redis_values import USAGE_TTL, _num, _seconds
from flux_proxy.store.redis_work import WORK_SCRIPTS, RedisWork

__all__ = ["LINE_GROUP", "OPEN_BLOCK_TTL", "SOCKET_TIMEOUT", "USAGE_TTL", "RedisStore", "mask_url"]

OPEN_BLOCK_TTL = 30 * 86400  # a block with no end (disabled) is still forgotten eventually
SOCKET_TIMEOUT = 1.0  # seconds; a Redis that does not answer must not hang a request

# used + live reservations + amount <= budget ? hold it : refuse. Lapsed holds are dropped.
_RESERVE = """
local now = tonumber(ARGV[4])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local value = entries[i + 1]
  local sep = string.find(value, ' ', 1, true)
  if tonumber(string.sub(value, sep + 1)) <= now then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    held = held + tonumber(string.sub(value, 1, sep - 1))
  end
end
if ARGV[3] ~= '' and used + held + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. ARGV[5])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[6]) then
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return 1
"""

# Drop the hold and count the real spend, in one step.
_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('INCRBYFLOAT', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def mask_url(url: str) -> str:
    """The Redis URL with any password replaced by `***`, safe for logs and pages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "redis://<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_client(url: str, socket_timeout: float) -> aioredis.Redis:
    """The client every Redis user here makes (the state store, the work queue)."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        # One immediate retry on a connection error revives a pooled connection that died
        # with a Redis restart; no backoff, so a dead Redis fails fast.
        retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
    )


class RedisStore(RedisWork, RedisJobs, RedisBatches, RedisKeys):
    name = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "flux-proxy:",
        clock: Clock | None = None,
        *,
        socket_timeout: float = SOCKET_TIMEOUT,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.clock = clock or Clock()
        self._socket_timeout = socket_timeout
        self._redis: aioredis.Redis | None = None
        self._reserve: AsyncScript | None = None
        self._settle: AsyncScript | None = None
        self._finish_line: AsyncScript | None = None
        self._release_line: AsyncScript | None = None
        self._swap_job: AsyncScript | None = None
        self._reserve_key: AsyncScript | None = None
        self._add_usage: AsyncScript | None = None
        self._work_scripts: dict[str, AsyncScript] = {}

    @property
    def safe_url(self) -> str:
        return mask_url(self.url)

    # --- plumbing ---------------------------------------------------------------------------
    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("RedisStore used before open()")
        return self._redis

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        self._client()
        assert self._reserve is not None and self._settle is not None
        return self._reserve, self._settle

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def open(self) -> None:
        """Create the client and register the scripts, then check Redis answers.

        Raises a Redis ConnectionError/TimeoutError when it does not; the client stays usable,
        so a caller that tolerates the outage (ResilientStore) can keep it and retry later.
        """
        if self._redis is None:
            self._redis = redis_client(self.url, self._socket_timeout)
            self._reserve = self._redis.register_script(_RESERVE)
            self._settle = self._redis.register_script(_SETTLE)
            self._finish_line = self._redis.register_script(FINISH_LINE)
            self._release_line = self._redis.register_script(RELEASE_LINE)
            self._swap_job = self._redis.register_script(SWAP_JOB)
            self._reserve_key = self._redis.register_script(RESERVE_KEY)
            self._add_usage = self._redis.register_script(ADD_USAGE)
            self._work_scripts = {
                name: self._redis.register_script(script) for name, script in WORK_SCRIPTS
            }
        await self.ping()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def ping(self) -> None:
        await self._client().ping()

    # --- blocks -----------------------------------------------------------------------------
    async def get_blocks(self, accounts: list[str]) -> dict[str, Block]:
        if not accounts:
            return {}
        values = await self._client().mget([self._key("block", a) for a in accounts])
        return {a: Block(**json.loads(v)) for a, v in zip(accounts, values, strict=True) if v}

    async def set_block(self, account: str, block: Block) -> None:
        # Redis forgets the block when it ends; one with no end is dropped after 30 days.
        ttl = OPEN_BLOCK_TTL if block.until is None else _seconds(block.until - self.clock.now())
        value = json.dumps(
            {
                "kind": block.kind,
                "until": block.until,
                "reason": block.reason,
                "code": block.code,
                "since": block.since,
            }
        )
        await self._client().set(self._key("block", account), value, ex=ttl)

    async def clear_block(self, account: str) -> None:
        await self._client().delete(self._key("block", account))

    # --- neuron ledger ----------------------------------------------------------------------
    async def try_reserve(
        self, account: str, day: str, amount: float, budget: float | None, ttl: float
    ) -> Reservation | None:
        reservation = Reservation(uuid.uuid4().hex, account, day, float(amount))
        now = self.clock.now()
        reserve, _ = self._scripts()
        granted = await reserve(
            keys=[self._key("usage", account, day), self._key("res", account, day)],
            args=[
                reservation.id,
                _num(amount),
                "" if budget is None else _num(budget),
                _num(now),
                _num(now + ttl),
                _seconds(ttl) + 60,  # the hash outlives its longest hold a little
            ],
        )
        return reservation if int(granted) == 1 else None

    async def settle(self, reservation: Reservation, actual: float) -> None:
        _, settle = self._scripts()
        await settle(
            keys=[
                self._key("usage", reservation.account, reservation.day),
                self._key("res", reservation.account, reservation.day),
            ],
            args=[reservation.id, _num(actual), USAGE_TTL],
        )

    async def release(self, reservation: Reservation) -> None:
        await self._client().hdel(
            self._key("res", reservation.account, reservation.day), reservation.id
        )

    async def record_spend(self, account: str, day: str, amount: float) -> None:
        key = self._key("usage", account, day)
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.incrbyfloat(key, float(amount))
            pipe.expire(key, USAGE_TTL)
            await pipe.execute()

    async def usage(self, accounts: list[str], day: str) -> dict[str, Usage]:
        if not accounts:
            return {}
        async with self._client().pipeline(transaction=True) as pipe:
            for account in accounts:
                pipe.get(self._key("usage", account, day))
                pipe.hvals(self._key("res", account, day))
            replies = await pipe.execute()
        now = self.clock.now()
        result = {}
        for index, account in enumerate(accounts):
            used, holds = replies[2 * index], replies[2 * index + 1]
            held = 0.0
            for hold in holds:
                amount, expires_at = hold.split(b" ", 1)
                if float(expires_at) > now:
                    held += float(amount)
            result[account] = Usage(float(used) if used is not None else 0.0, held)
        return result

    # --- blobs ------------------------------------------------------------------------------
    async def put_blob(self, key: str, data: bytes, content_type: str, ttl: float) -> None:
        name = self._key("blob", key)
        expires_at = self.clock.now() + ttl
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.delete(name)
            pipe.hset(
                name,
                mapping={"data": data, "type": content_type, "expires_at": _num(expires_at)},
            )
            pipe.expire(name, _seconds(ttl))
            await pipe.execute()

    async def get_blob(self, key: str) -> tuple[bytes, str] | None:
        data, content_type, expires_at = await self._client().hmget(
            self._key("blob", key), ["data", "type", "expires_at"]
        )
        # Redis expires the key in real seconds; the clock decides (tests move it).
        if data is None or expires_at is None or float(expires_at) <= self.clock.now():
            return None
        return data, content_type.decode()

    # --- health -----------------------------------------------------------------------------
    @property
    def detail(self) -> str:
        parts = urlsplit(self.url)
        where = parts.hostname or parts.path or "redis"
        if parts.port:
            where = f"{where}:{parts.port}"
        return f"shared state in redis at {where}"

    async def status(self) -> dict:
        try:
            await self.ping()
        except Exception as exc:
            return {
                "backend": self.name,
                "ok": False,
                "detail": f"redis unreachable ({type(exc).__name__})",
            }
        return {"backend": self.name, "ok": True, "detail": self.detail}
