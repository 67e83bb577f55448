"""The shared state store: several replicas see one set of blocks, budgets and images in Redis.

Keys (all under the configured prefix, all with a TTL so nothing grows forever):
- `{prefix}block:{account}`       JSON Block; expires at `until` (no end: 30 days)
- `{prefix}usage:{account}:{day}` settled neurons (INCRBYFLOAT); 3 days
- `{prefix}res:{account}:{day}`   hash id -> "amount expires_at" of held reservations
- `{prefix}blob:{key}`            hash data/type/expires_at; the blob's ttl
- `{prefix}job:{id}`              hash status/head/request/result/expires_at; the job's ttl
- `{prefix}kq:{name}:{day}`       hash images/neurons a named key used (settled); 3 days
- `{prefix}kqres:{name}:{day}`    hash id -> "images neurons expires_at" of a key's held quota
- `{prefix}urow:{day}`            hash "name\taccount\tmodel\tcounter" -> value: usage rows;
                                  USAGE_HISTORY_DAYS + 1

Budget checks run as Lua scripts, so check-and-reserve is one atomic step across replicas.
Time comes from the injected clock, passed into the scripts, not from Redis TIME: replicas
already agree on wall time closely enough, and tests can move a FrozenClock.
"""

from __future__ import annotations

import datetime
import json
import math
import uuid
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError

from flux_proxy.clock import Clock
from flux_proxy.store.base import (
    USAGE_COUNTERS,
    Block,
    JobRecord,
    KeyReservation,
    KeyUsage,
    LineClaim,
    Reservation,
    Usage,
    UsageRow,
    add_rows,
    doc_matches,
    empty_line_counts,
)
from flux_proxy.store.job_codec import job_from_parts, job_head

USAGE_TTL = 3 * 86400
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

# Jobs: replace the hash only if it is there, unexpired, and in one of the expected statuses.
# ARGV: now, expires_at, ttl seconds, status, head, request, result ('' = none), expected...
_SWAP_JOB = """
local current = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
if not current[1] or tonumber(current[2]) <= tonumber(ARGV[1]) then
  return 0
end
local expected = false
for i = 8, #ARGV do
  if ARGV[i] == current[1] then expected = true end
end
if not expected then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'head', ARGV[5], 'request', ARGV[6],
           'expires_at', ARGV[2])
if ARGV[7] == '' then
  redis.call('HDEL', KEYS[1], 'result')
else
  redis.call('HSET', KEYS[1], 'result', ARGV[7])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


# Batches (issue 10): a line's outcome is recorded once; counters move with it, in one step.
_FINISH_LINE = """
local ttl = redis.call('TTL', KEYS[3])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2] .. '\\n' .. ARGV[3]) == 0 then
  redis.call('XACK', KEYS[3], ARGV[5], ARGV[6])
  return false
end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBYFLOAT', KEYS[2], 'neurons', ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('XACK', KEYS[3], ARGV[5], ARGV[6])
return redis.call('HGETALL', KEYS[2])
"""

# Give a line back only if this consumer still holds it and nobody finished it: re-queue its
# payload as a new entry and drop the old one.
_RELEASE_LINE = """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then return 0 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[4] then return 0 end
redis.call('XADD', KEYS[1], '*', 'idx', ARGV[3], 'payload', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

LINE_GROUP = "runners"
# --- work: markers, kept results, the seeded cache ---
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


# Jobs: replace the hash only if it is there, unexpired, and in one of the expected statuses.
# ARGV: now, expires_at, ttl seconds, status, head, request, result ('' = none), expected...
_SWAP_JOB = """
local current = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
if not current[1] or tonumber(current[2]) <= tonumber(ARGV[1]) then
  return 0
end
local expected = false
for i = 8, #ARGV do
  if ARGV[i] == current[1] then expected = true end
end
if not expected then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'head', ARGV[5], 'request', ARGV[6],
           'expires_at', ARGV[2])
if ARGV[7] == '' then
  redis.call('HDEL', KEYS[1], 'result')
else
  redis.call('HSET', KEYS[1], 'result', ARGV[7])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


# --- key quotas and usage: the same check-and-hold as the neuron ledger, for named keys ------
_RESERVE_KEY = """
local now = tonumber(ARGV[6])
local used_images = tonumber(redis.call('HGET', KEYS[1], 'images') or '0')
local used_neurons = tonumber(redis.call('HGET', KEYS[1], 'neurons') or '0')
local held_images, held_neurons = 0, 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  local images, neurons, expires = string.match(entries[i + 1], '^(%S+) (%S+) (%S+)$')
  if tonumber(expires) <= now then
    redis.call('HDEL', KEYS[2], entries[i])
  else
    held_images = held_images + tonumber(images)
    held_neurons = held_neurons + tonumber(neurons)
  end
end
if ARGV[4] ~= '' and used_images + held_images + tonumber(ARGV[2]) > tonumber(ARGV[4]) then
  return 0
end
if ARGV[5] ~= '' and used_neurons + held_neurons + tonumber(ARGV[3]) > tonumber(ARGV[5]) then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[7])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[8]) then
  redis.call('EXPIRE', KEYS[2], ARGV[8])
end
return 1
"""

# Drop a hold (ARGV[1], may be '') and add usage rows, in one step. KEYS: the holds hash, then
# per row its key's totals hash and its day's rows hash. ARGV per row: the field prefix and the
# five counters.
_ADD_USAGE = """
if ARGV[1] ~= '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local names = {'images', 'neurons', 'requests', 'cache_hits', 'neurons_saved'}
for r = 0, (#KEYS - 1) / 2 - 1 do
  local totals, rows = KEYS[2 + 2 * r], KEYS[3 + 2 * r]
  local base = 4 + 6 * r
  for c = 1, 5 do
    redis.call('HINCRBYFLOAT', rows, ARGV[base] .. names[c], ARGV[base + c])
  end
  redis.call('HINCRBYFLOAT', totals, 'images', ARGV[base + 1])
  redis.call('HINCRBYFLOAT', totals, 'neurons', ARGV[base + 2])
  redis.call('EXPIRE', rows, ARGV[2])
  redis.call('EXPIRE', totals, ARGV[3])
end
return 1
"""


def _days(first_day: str, last_day: str) -> list[str]:
    first, last = datetime.date.fromisoformat(first_day), datetime.date.fromisoformat(last_day)
    count = (last - first).days + 1
    return [(first + datetime.timedelta(days=i)).isoformat() for i in range(count)]


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


def _num(value: float) -> str:
    return repr(float(value))


def _seconds(value: float) -> int:
    """A positive whole-second TTL (Redis refuses 0 and negatives)."""
    return max(1, math.ceil(value))


class RedisStore:
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
            self._redis = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                # One immediate retry on a connection error revives a pooled connection that
                # died with a Redis restart; no backoff, so a dead Redis fails fast.
                retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
            )
            self._reserve = self._redis.register_script(_RESERVE)
            self._settle = self._redis.register_script(_SETTLE)
            self._finish_line = self._redis.register_script(_FINISH_LINE)
            self._release_line = self._redis.register_script(_RELEASE_LINE)
            self._swap_job = self._redis.register_script(_SWAP_JOB)
            self._reserve_key = self._redis.register_script(_RESERVE_KEY)
            self._add_usage = self._redis.register_script(_ADD_USAGE)
            self._work_scripts = {
                name: self._redis.register_script(script)
                for name, script in (
                    ("claim", _CLAIM),
                    ("unclaim", _UNCLAIM),
                    ("cache_put", _CACHE_PUT),
                    ("cache_get", _CACHE_GET),
                    ("cache_drop", _CACHE_DROP),
                    ("cache_stats", _CACHE_STATS),
                )
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

    # --- key quotas and usage ---------------------------------------------------------------
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
        self._client()
        assert self._reserve_key is not None
        hold = KeyReservation(uuid.uuid4().hex, key, day, int(images), float(neurons))
        now = self.clock.now()
        granted = await self._reserve_key(
            keys=[self._key("kq", key, day), self._key("kqres", key, day)],
            args=[
                hold.id,
                str(hold.images),
                _num(hold.neurons),
                "" if max_images is None else str(int(max_images)),
                "" if max_neurons is None else _num(max_neurons),
                _num(now),
                _num(now + ttl),
                _seconds(ttl) + 60,
            ],
        )
        return hold if int(granted) == 1 else None

    async def _add_rows(self, hold: KeyReservation | None, rows: list[UsageRow], keep_days: int):
        self._client()
        assert self._add_usage is not None
        if hold is None and not rows:
            return
        holds = self._key("kqres", hold.key, hold.day) if hold else self._key("kqres", "-")
        keys, args = [holds], [hold.id if hold else "", keep_days * 86400 + 86400, USAGE_TTL]
        for row in rows:
            keys += [self._key("kq", row.key, row.day), self._key("urow", row.day)]
            args += [f"{row.key}\t{row.account}\t{row.model}\t"]
            args += [_num(getattr(row, name)) for name in USAGE_COUNTERS]
        await self._add_usage(keys=keys, args=args)

    async def settle_key(
        self, reservation: KeyReservation, rows: list[UsageRow], keep_days: int
    ) -> None:
        await self._add_rows(reservation, rows, keep_days)

    async def release_key(self, reservation: KeyReservation) -> None:
        await self._client().hdel(
            self._key("kqres", reservation.key, reservation.day), reservation.id
        )

    async def record_usage(self, rows: list[UsageRow], keep_days: int) -> None:
        await self._add_rows(None, rows, keep_days)

    async def key_usage(self, key: str, day: str) -> KeyUsage:
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.hmget(self._key("kq", key, day), ["images", "neurons"])
            pipe.hvals(self._key("kqres", key, day))
            (images, neurons), holds = await pipe.execute()
        now = self.clock.now()
        held_images, held_neurons = 0, 0.0
        for hold in holds:
            held, amount, expires_at = hold.split(b" ")
            if float(expires_at) > now:
                held_images += int(held)
                held_neurons += float(amount)
        return KeyUsage(int(float(images or 0)), float(neurons or 0), held_images, held_neurons)

    async def usage_rows(
        self, first_day: str, last_day: str, key: str | None = None
    ) -> list[UsageRow]:
        days = _days(first_day, last_day)
        async with self._client().pipeline(transaction=False) as pipe:
            for day in days:
                pipe.hgetall(self._key("urow", day))
            replies = await pipe.execute()
        found: dict[tuple[str, str, str, str], UsageRow] = {}
        for day, fields in zip(days, replies, strict=True):
            for field, value in fields.items():
                name, account, model, counter = field.decode().split("\t")
                if key is not None and name != key:
                    continue
                amount = float(value)
                count = amount if counter in ("neurons", "neurons_saved") else round(amount)
                index = (day, name, account, model)
                found[index] = add_rows(
                    found.get(index), UsageRow(day, name, account, model, **{counter: count})
                )
        return list(found.values())

    # --- work ---
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

    # --- jobs ---
    async def put_job(self, job: JobRecord, ttl: float) -> None:
        name = self._key("job", job.id)
        fields = {
            "status": job.status,
            "head": job_head(job),
            "request": job.request,
            "expires_at": _num(self.clock.now() + ttl),
        }
        if job.result is not None:
            fields["result"] = job.result
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.delete(name)
            pipe.hset(name, mapping=fields)
            pipe.expire(name, _seconds(ttl))
            await pipe.execute()

    async def get_job(self, job_id: str) -> JobRecord | None:
        head, request, result, expires_at = await self._client().hmget(
            self._key("job", job_id), ["head", "request", "result", "expires_at"]
        )
        if head is None or expires_at is None or float(expires_at) <= self.clock.now():
            return None
        return job_from_parts(head, request, result)

    async def swap_job(self, job: JobRecord, expect: frozenset[str], ttl: float) -> bool:
        if not expect:
            return False
        self._client()
        assert self._swap_job is not None
        now = self.clock.now()
        if job.result == b"":
            raise ValueError("an empty result cannot be stored; use None")
        done = await self._swap_job(
            keys=[self._key("job", job.id)],
            args=[
                _num(now),
                _num(now + ttl),
                _seconds(ttl),
                job.status,
                job_head(job),
                job.request,
                job.result if job.result is not None else "",
                *sorted(expect),
            ],
        )
        return int(done) == 1

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

    # --- batches and files (issue 10) ---------------------------------------------------------
    # Documents: `{prefix}doc:{kind}:{id}` JSON, listed by the set `{prefix}docs:{kind}`.
    # Lines: the stream `{prefix}lines:{batch}` (consumer group "runners"), outcomes in the
    # hash `{prefix}line-results:{batch}`, counters in `{prefix}line-counts:{batch}`.

    async def put_doc(self, kind: str, doc_id: str, doc: dict) -> None:
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.set(self._key("doc", kind, doc_id), json.dumps(doc))
            pipe.sadd(self._key("docs", kind), doc_id)
            await pipe.execute()

    async def get_doc(self, kind: str, doc_id: str) -> dict | None:
        raw = await self._client().get(self._key("doc", kind, doc_id))
        return json.loads(raw) if raw is not None else None

    async def list_docs(self, kind: str) -> list[dict]:
        client = self._client()
        ids = sorted(member.decode() for member in await client.smembers(self._key("docs", kind)))
        if not ids:
            return []
        values = await client.mget([self._key("doc", kind, doc_id) for doc_id in ids])
        return [json.loads(value) for value in values if value is not None]

    async def patch_doc(
        self, kind: str, doc_id: str, changes: dict, when: dict | None = None
    ) -> dict | None:
        key = self._key("doc", kind, doc_id)
        # Optimistic: WATCH the key, check, write in MULTI; another writer in between retries.
        async with self._client().pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    doc = json.loads(raw)
                    if not doc_matches(doc, when):
                        return None
                    doc.update(changes)
                    pipe.multi()
                    pipe.set(key, json.dumps(doc))
                    await pipe.execute()
                    return doc
                except WatchError:
                    continue

    async def delete_doc(self, kind: str, doc_id: str) -> bool:
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.delete(self._key("doc", kind, doc_id))
            pipe.srem(self._key("docs", kind), doc_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    def _line_keys(self, batch: str) -> tuple[str, str, str]:
        return (
            self._key("lines", batch),
            self._key("line-results", batch),
            self._key("line-counts", batch),
        )

    async def add_lines(self, batch: str, payloads: list[str], ttl: float) -> None:
        stream, results, counts = self._line_keys(batch)
        client = self._client()
        await client.delete(stream, results, counts)
        await client.xgroup_create(stream, LINE_GROUP, id="0", mkstream=True)
        for start in range(0, len(payloads), 500):
            async with client.pipeline(transaction=False) as pipe:
                for index in range(start, min(start + 500, len(payloads))):
                    pipe.xadd(stream, {"idx": index, "payload": payloads[index]})
                await pipe.execute()
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(counts, mapping=empty_line_counts())
            pipe.expire(stream, _seconds(ttl))
            pipe.expire(counts, _seconds(ttl))
            await pipe.execute()

    async def claim_line(self, batch: str, worker: str, lease: float) -> LineClaim | None:
        stream, results, _ = self._line_keys(batch)
        client = self._client()
        try:
            # First a line whose holder has been silent longer than the lease (it died)...
            start = "0-0"
            while True:
                reply = await client.xautoclaim(
                    stream, LINE_GROUP, worker, int(lease * 1000), start_id=start, count=1
                )
                start, entries = reply[0], reply[1]
                for entry_id, fields in entries:
                    claim = await self._fresh_claim(batch, worker, entry_id, fields, results)
                    if claim is not None:
                        return claim
                if start in (b"0-0", "0-0"):
                    break
            # ...else one nobody has had yet.
            while True:
                reply = await client.xreadgroup(LINE_GROUP, worker, {stream: ">"}, count=1)
                if not reply or not reply[0][1]:
                    return None
                entry_id, fields = reply[0][1][0]
                claim = await self._fresh_claim(batch, worker, entry_id, fields, results)
                if claim is not None:
                    return claim
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return None  # the batch's lines are gone (finished and dropped)
            raise

    async def _fresh_claim(
        self, batch: str, worker: str, entry_id: bytes, fields: dict, results: str
    ) -> LineClaim | None:
        """The claim, unless the line was finished already (then the entry is just acked)."""
        index = int(fields[b"idx"])
        stream = self._key("lines", batch)
        if await self._client().hexists(results, str(index)):
            await self._client().xack(stream, LINE_GROUP, entry_id)
            return None
        token = f"{entry_id.decode()}|{worker}"
        return LineClaim(batch, index, fields[b"payload"].decode(), token)

    async def release_line(self, claim: LineClaim) -> None:
        stream, results, _ = self._line_keys(claim.batch)
        entry_id, _, worker = claim.token.partition("|")
        await self._release_line(
            keys=[stream, results],
            args=[LINE_GROUP, entry_id, claim.index, worker, claim.payload],
        )

    async def finish_line(
        self, claim: LineClaim, outcome: str, result: str, neurons: float = 0.0
    ) -> dict | None:
        stream, results, counts = self._line_keys(claim.batch)
        entry_id = claim.token.partition("|")[0]
        reply = await self._finish_line(
            keys=[results, counts, stream],
            args=[claim.index, outcome, result, _num(neurons), LINE_GROUP, entry_id],
        )
        if reply is None:
            return None
        return _parse_counts(dict(zip(reply[::2], reply[1::2], strict=True)))

    async def line_counts(self, batch: str) -> dict:
        return _parse_counts(await self._client().hgetall(self._line_keys(batch)[2]))

    async def line_results(self, batch: str) -> list[tuple[int, str, str]]:
        raw = await self._client().hgetall(self._line_keys(batch)[1])
        found = []
        for index, value in raw.items():
            outcome, _, result = value.decode().partition("\n")
            found.append((int(index), outcome, result))
        return sorted(found)

    async def drop_lines(self, batch: str) -> None:
        await self._client().delete(*self._line_keys(batch))


def _parse_counts(raw: dict) -> dict:
    counts = empty_line_counts()
    for name, value in raw.items():
        key = name.decode() if isinstance(name, bytes) else name
        if key in counts:
            counts[key] = float(value) if key == "neurons" else int(float(value))
    return counts
