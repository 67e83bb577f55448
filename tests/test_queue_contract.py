"""One contract, every back-end: MemoryQueue, SqliteQueue and RedisQueue (Redis Streams with a
consumer group) hand out, renew, release, take over and acknowledge entries the same way.

Leases run on real time on every back-end (Redis measures idle time itself), so the takeover
tests use short leases and wait for the condition with a generous deadline.
Redis runs at REDIS_URL; each test has its own key prefix (the `redis_prefix` fixture).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import REDIS_URL

from flux_proxy.clock import Clock
from flux_proxy.work.queue import MemoryQueue
from flux_proxy.work.queue_redis import RedisQueue
from flux_proxy.work.queue_sqlite import SqliteQueue

LONG = 30.0  # a lease nobody outlives during a test
SHORT = 0.3


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request) -> str:
    return request.param


@pytest.fixture
async def make_queue(backend, tmp_path, request):
    """`await make_queue()`: a queue on the back-end under test; several calls give several
    handles on the same queue (two processes on one file, two replicas on one Redis)."""
    opened = []
    memory = MemoryQueue(Clock())
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else ""

    async def factory():
        if backend == "memory":
            queue = memory
        elif backend == "sqlite":
            queue = SqliteQueue(tmp_path / "queue.sqlite3", Clock())
        else:
            queue = RedisQueue(REDIS_URL, prefix)
        await queue.open()
        opened.append(queue)
        return queue

    yield factory
    for queue in opened:
        await queue.close()


async def eventually_claimed(queue, kind, consumer, lease, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        delivery = await queue.claim(kind, consumer, lease)
        if delivery is not None:
            return delivery
        await asyncio.sleep(0.05)
    raise AssertionError(f"{consumer} claimed nothing within {deadline} s")


async def test_entries_come_out_in_put_order_with_their_payload(make_queue):
    queue = await make_queue()
    for n in range(3):
        await queue.put("jobs", f"job-{n}", f"payload {n}".encode())
    got = [await queue.claim("jobs", "a", LONG) for _ in range(3)]
    assert [(d.entry_id, d.payload, d.attempt) for d in got] == [
        ("job-0", b"payload 0", 1),
        ("job-1", b"payload 1", 1),
        ("job-2", b"payload 2", 1),
    ]
    assert await queue.claim("jobs", "a", LONG) is None


async def test_an_empty_queue_claims_nothing(make_queue):
    queue = await make_queue()
    assert await queue.claim("nothing-here", "a", LONG) is None
    assert await queue.depth("nothing-here") == 0


async def test_kinds_are_separate_lines(make_queue):
    queue = await make_queue()
    await queue.put("batch:1", "line-1", b"x")
    assert await queue.claim("batch:2", "a", LONG) is None
    delivery = await queue.claim("batch:1", "a", LONG)
    assert delivery is not None and delivery.entry_id == "line-1" and delivery.kind == "batch:1"


async def test_a_held_entry_is_not_handed_to_another_consumer(make_queue):
    first, second = await make_queue(), await make_queue()
    await first.put("jobs", "job-1", b"x")
    assert await first.claim("jobs", "a", LONG) is not None
    assert await second.claim("jobs", "b", LONG) is None
    assert await second.depth("jobs") == 1  # held, not gone


async def test_ack_removes_the_entry_for_good(make_queue):
    queue = await make_queue()
    await queue.put("jobs", "job-1", b"x")
    delivery = await queue.claim("jobs", "a", SHORT)
    await queue.ack(delivery)
    assert await queue.depth("jobs") == 0
    await asyncio.sleep(SHORT * 2)  # past the lease: still nothing to take over
    assert await queue.claim("jobs", "b", SHORT) is None


async def test_a_lapsed_lease_is_taken_over_with_the_next_attempt(make_queue):
    dead, alive = await make_queue(), await make_queue()
    await dead.put("jobs", "job-1", b"payload")
    lost = await dead.claim("jobs", "replica-a", SHORT)
    assert lost.attempt == 1
    # replica-a never renews (it "died"): after the lease, replica-b gets the entry.
    taken = await eventually_claimed(alive, "jobs", "replica-b", SHORT)
    assert (taken.entry_id, taken.payload, taken.attempt) == ("job-1", b"payload", 2)
    assert await alive.renew(taken, LONG)
    # The dead holder can no longer renew or release what replica-b now holds.
    assert not await dead.renew(lost, LONG)
    await dead.release(lost)
    assert await alive.claim("jobs", "replica-c", LONG) is None
    await alive.ack(taken)
    assert await alive.depth("jobs") == 0


async def test_renewing_keeps_the_entry_past_its_first_lease(make_queue):
    holder, other = await make_queue(), await make_queue()
    await holder.put("jobs", "job-1", b"x")
    delivery = await holder.claim("jobs", "a", 1.0)
    for _ in range(4):  # 2 s in all, twice the lease, renewed every half lease
        await asyncio.sleep(0.5)
        assert await holder.renew(delivery, 1.0)
        assert await other.claim("jobs", "b", 1.0) is None


async def test_a_released_entry_can_be_claimed_again_at_once(make_queue):
    queue = await make_queue()
    await queue.put("jobs", "job-1", b"x")
    delivery = await queue.claim("jobs", "a", LONG)
    await queue.release(delivery)
    again = await queue.claim("jobs", "b", LONG)
    assert again is not None and again.entry_id == "job-1" and again.attempt == 2


async def test_a_stale_entry_behind_held_ones_is_still_taken_over(make_queue):
    queue = await make_queue()
    for n in range(25):
        await queue.put("jobs", f"job-{n}", b"x")
    held = [await queue.claim("jobs", "a", LONG) for _ in range(24)]
    last = await queue.claim("jobs", "a", LONG)
    await queue.release(last)  # the only free entry, behind 24 held ones
    taken = await queue.claim("jobs", "b", LONG)
    assert taken is not None and taken.entry_id == "job-24"
    assert all(d is not None for d in held)


async def test_entries_survive_reopening(make_queue, backend):
    if backend == "memory":
        pytest.skip("memory is forgotten by design")
    queue = await make_queue()
    await queue.put("jobs", "job-1", b"kept")
    await queue.close()
    reopened = await make_queue()
    delivery = await reopened.claim("jobs", "a", LONG)
    assert delivery is not None and delivery.payload == b"kept"


async def test_concurrent_consumers_never_get_the_same_entry(make_queue):
    queues = [await make_queue() for _ in range(3)]
    for n in range(30):
        await queues[0].put("jobs", f"job-{n}", b"x")

    async def drain(queue, name):
        taken = []
        while (delivery := await queue.claim("jobs", name, LONG)) is not None:
            taken.append(delivery.entry_id)
            await queue.ack(delivery)
        return taken

    results = await asyncio.gather(*(drain(q, f"c{i}") for i, q in enumerate(queues)))
    everything = [entry for taken in results for entry in taken]
    assert sorted(everything) == sorted(f"job-{n}" for n in range(30))


async def test_redis_that_came_back_empty_still_hands_out_new_entries(redis_prefix):
    """A Redis restarted without persistence (or flushed, or failed over to an empty
    replica) has lost the stream and its consumer group; jobs submitted afterwards must run,
    not fail `XREADGROUP` with NOGROUP on every claim while their 202s wait forever."""
    import redis.asyncio as aioredis

    queue = RedisQueue(REDIS_URL, redis_prefix)
    await queue.open()
    try:
        await queue.put("jobs", "before", b"x")
        assert (await queue.claim("jobs", "a", LONG)).entry_id == "before"
        wipe = aioredis.Redis.from_url(REDIS_URL)
        await wipe.delete(f"{redis_prefix}queue:jobs")  # what an empty Redis looks like
        await wipe.aclose()
        await queue.put("jobs", "after", b"y")
        delivery = await queue.claim("jobs", "a", LONG)
        assert delivery is not None and delivery.entry_id == "after"
        await queue.ack(delivery)
        assert await queue.claim("jobs", "a", LONG) is None
    finally:
        await queue.close()
