"""The Redis store's jobs section: durable single jobs.

Key: `{prefix}job:{id}`, a hash status/head/request/result/expires_at; the job's ttl.

Mixed into `RedisStore`, whose `_client`, `_key` and `clock` it uses; `open()` registers
`SWAP_JOB` as `_swap_job`.
"""

from __future__ import annotations

from flux_proxy.store.base import JobRecord
from flux_proxy.store.job_codec import job_from_parts, job_head
from flux_proxy.store.redis_values import _num, _seconds

# Replace the job's hash only if it is there, unexpired, and in one of the expected statuses.
# ARGV: now, expires_at, ttl seconds, status, head, request, result ('' = none), expected...
SWAP_JOB = """
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


class RedisJobs:
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
