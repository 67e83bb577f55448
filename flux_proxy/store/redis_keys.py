"""The Redis store's key quotas and usage section: the same check-and-hold as the neuron
ledger, for named keys.

Keys:
- `{prefix}kq:{name}:{day}`       hash images/neurons a named key used (settled); 3 days
- `{prefix}kqres:{name}:{day}`    hash id -> "images neurons expires_at" of a key's held quota
- `{prefix}urow:{day}`            hash "name\taccount\tmodel\tcounter" -> value: usage rows;
                                  USAGE_HISTORY_DAYS + 1

Mixed into `RedisStore`, whose `_client`, `_key` and `clock` it uses; `open()` registers
`RESERVE_KEY` and `ADD_USAGE` as `_reserve_key` and `_add_usage`.
"""

from __future__ import annotations

import datetime
import uuid

from flux_proxy.store.base import USAGE_COUNTERS, KeyReservation, KeyUsage, UsageRow, add_rows
from flux_proxy.store.redis_values import USAGE_TTL, _num, _seconds

RESERVE_KEY = """
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
ADD_USAGE = """
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


class RedisKeys:
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
