"""The Redis store's batches and files section (issue 10).

Documents: `{prefix}doc:{kind}:{id}` JSON, listed by the set `{prefix}docs:{kind}`.
Lines: the stream `{prefix}lines:{batch}` (consumer group "runners"), outcomes in the
hash `{prefix}line-results:{batch}`, counters in `{prefix}line-counts:{batch}`.

Mixed into `RedisStore`, whose `_client`, `_key` and `clock` it uses; `open()` registers
`FINISH_LINE` and `RELEASE_LINE` as `_finish_line` and `_release_line`.
"""

from __future__ import annotations

import json

from redis.exceptions import ResponseError, WatchError

from flux_proxy.store.base import LineClaim, doc_matches, empty_line_counts
from flux_proxy.store.redis_values import _num, _seconds

# A line's outcome is recorded once; counters move with it, in one step.
FINISH_LINE = """
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
RELEASE_LINE = """
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then return 0 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[4] then return 0 end
redis.call('XADD', KEYS[1], '*', 'idx', ARGV[3], 'payload', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

LINE_GROUP = "runners"


class RedisBatches:
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
