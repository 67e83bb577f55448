"""The Redis store's work section: in-flight markers, kept results, the seeded cache.

Keys: `{prefix}claim:{key}` (a marker), `{prefix}result:{key}` (hash data/expires_at; the
result's ttl), and the cache's `{prefix}cache:{key}` entries with their bookkeeping keys
(`cache-recency`, `cache-sizes`, `cache-expiry`, `cache-bytes`, `cache-tick`; below).

Mixed into `RedisStore`, whose `_client`, `_key` and `clock` it uses; `open()` registers
`WORK_SCRIPTS`.
"""

from __future__ import annotations

import math

from redis.commands.core import AsyncScript

from flux_proxy.store.redis_values import _num, _seconds

# A marker's value is "<expires_at> <holder>": the injected clock decides when it lapses (as for
# every other key here); PX is only Redis's own backstop.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ' ', 1, true)
  if tonumber(string.sub(current, 1, sep - 1)) > tonumber(ARGV[2]) then
    return string.sub(current, sep + 1)
  end
end
redis.call('SET', KEYS[1], ARGV[3] .. ' ' .. ARGV[1], 'PX', ARGV[4])
return ''
"""

_UNCLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ' ', 1, true)
  if string.sub(current, sep + 1) == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
end
return 1
"""

# The cache: entries are plain keys `{prefix}cache:{key}`; KEYS[1] a sorted set of recency
# (a counter, KEYS[5], so equal instants still have an order), KEYS[2] a hash of sizes,
# KEYS[3] a sorted set of expiry times, KEYS[4] the total bytes. Every script first drops the
# entries whose time has passed, so sizes and totals never count dead entries.
_CACHE_PRELUDE = """
local function drop(member)
  local size = redis.call('HGET', KEYS[2], member)
  if size then
    redis.call('DECRBY', KEYS[4], size)
    redis.call('HDEL', KEYS[2], member)
  end
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('DEL', ARGV[1] .. member)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])) do
  drop(member)
end
"""

_CACHE_PUT = (
    _CACHE_PRELUDE
    + """
drop(ARGV[3])
local size = string.len(ARGV[4])
local limit = tonumber(ARGV[7])
if size > limit then
  return 0
end
redis.call('SET', ARGV[1] .. ARGV[3], ARGV[4], 'EX', ARGV[6])
redis.call('HSET', KEYS[2], ARGV[3], size)
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[5]), ARGV[3])
local total = redis.call('INCRBY', KEYS[4], size)
while total > limit do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 then
    break
  end
  drop(oldest[1])
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
end
return 1
"""
)

_CACHE_GET = (
    _CACHE_PRELUDE
    + """
if not redis.call('ZSCORE', KEYS[3], ARGV[3]) then
  return false
end
local data = redis.call('GET', ARGV[1] .. ARGV[3])
if not data then
  drop(ARGV[3])
  return false
end
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[5]), ARGV[3])
return data
"""
)

_CACHE_DROP = _CACHE_PRELUDE + "drop(ARGV[3])\nreturn 1\n"

_CACHE_STATS = (
    _CACHE_PRELUDE
    + """
return {redis.call('HLEN', KEYS[2]), tonumber(redis.call('GET', KEYS[4]) or '0')}
"""
)

WORK_SCRIPTS = (
    ("claim", _CLAIM),
    ("unclaim", _UNCLAIM),
    ("cache_put", _CACHE_PUT),
    ("cache_get", _CACHE_GET),
    ("cache_drop", _CACHE_DROP),
    ("cache_stats", _CACHE_STATS),
)


class RedisWork:
    def _script(self, name: str) -> AsyncScript:
        self._client()
        return self._work_scripts[name]

    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        now = self.clock.now()
        current = await self._script("claim")(
            keys=[self._key("claim", key)],
            args=[holder, _num(now), _num(now + ttl), max(1, math.ceil(ttl * 1000))],
        )
        return current.decode() if current else None

    async def holder_of(self, key: str) -> str | None:
        value = await self._client().get(self._key("claim", key))
        if value is None:
            return None
        expires_at, _, holder = value.decode().partition(" ")
        return holder if float(expires_at) > self.clock.now() else None

    async def unclaim(self, key: str, holder: str) -> None:
        await self._script("unclaim")(keys=[self._key("claim", key)], args=[holder])

    async def put_result(self, key: str, data: bytes, ttl: float) -> None:
        name = self._key("result", key)
        expires_at = self.clock.now() + ttl
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.delete(name)
            pipe.hset(name, mapping={"data": data, "expires_at": _num(expires_at)})
            pipe.expire(name, _seconds(ttl))
            await pipe.execute()

    async def get_result(self, key: str) -> bytes | None:
        data, expires_at = await self._client().hmget(
            self._key("result", key), ["data", "expires_at"]
        )
        if data is None or expires_at is None or float(expires_at) <= self.clock.now():
            return None
        return data

    def _cache_keys(self) -> list[str]:
        return [
            self._key("cache-recency"),
            self._key("cache-sizes"),
            self._key("cache-expiry"),
            self._key("cache-bytes"),
            self._key("cache-tick"),
        ]

    def _cache_args(self, *more: object) -> list:
        return [self._key("cache", ""), _num(self.clock.now()), *more]

    async def cache_put(self, key: str, data: bytes, ttl: float, max_bytes: int) -> None:
        expires_at = self.clock.now() + ttl
        await self._script("cache_put")(
            keys=self._cache_keys(),
            # Redis's own expiry a day after ours: the clock decides, this only backstops.
            args=self._cache_args(key, data, _num(expires_at), _seconds(ttl) + 86400, max_bytes),
        )

    async def cache_get(self, key: str) -> bytes | None:
        return await self._script("cache_get")(keys=self._cache_keys(), args=self._cache_args(key))

    async def cache_drop(self, key: str) -> None:
        await self._script("cache_drop")(keys=self._cache_keys(), args=self._cache_args(key))

    async def cache_stats(self) -> dict:
        entries, size = await self._script("cache_stats")(
            keys=self._cache_keys(), args=self._cache_args()
        )
        return {"entries": int(entries), "bytes": int(size)}
