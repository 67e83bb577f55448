"""The job records of the state store, one contract for every back-end (memory, SQLite, Redis,
Redis with its local net): the same `store` fixture as `test_store_contract.py`."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from procs import free_port
from test_store_contract import START, clock, store  # noqa: F401 (fixtures)

from flux_proxy.errors import ApiError
from flux_proxy.store.base import JobRecord
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.redis import RedisStore
from flux_proxy.store.resilient import ResilientStore

QUEUED = frozenset({"queued"})
RUNNABLE = frozenset({"queued", "in_progress"})


def a_job(**changes) -> JobRecord:
    job = JobRecord(
        id="imgjob_1",
        owner="master",
        kind="image.generation",
        status="queued",
        created_at=START,
        request=b'{"prompt": "a lighthouse"}\x00\xff',  # bytes as they are, not text
        meta={"model": "flux-2-dev", "n": 2},
    )
    return replace(job, **changes)


async def test_a_job_round_trips_every_field(store):  # noqa: F811
    job = a_job(
        status="completed",
        started_at=START + 1,
        completed_at=START + 5.5,
        result=b'{"data": []}',
        error=None,
        attempts=2,
    )
    await store.put_job(job, ttl=60)
    assert await store.get_job("imgjob_1") == job
    failed = a_job(id="imgjob_2", status="failed", error={"message": "x", "code": "y"})
    await store.put_job(failed, ttl=60)
    assert await store.get_job("imgjob_2") == failed


async def test_an_unknown_job_is_none(store):  # noqa: F811
    assert await store.get_job("imgjob_nobody") is None


async def test_a_job_expires_after_its_ttl(store, clock):  # noqa: F811
    await store.put_job(a_job(), ttl=60)
    clock.advance(59)
    assert await store.get_job("imgjob_1") is not None
    clock.advance(2)
    assert await store.get_job("imgjob_1") is None
    assert not await store.swap_job(a_job(status="in_progress"), RUNNABLE, ttl=60)


async def test_swap_replaces_only_from_an_expected_status(store):  # noqa: F811
    await store.put_job(a_job(), ttl=60)
    started = a_job(status="in_progress", attempts=1, started_at=START + 1)
    assert await store.swap_job(started, QUEUED, ttl=60)
    assert await store.get_job("imgjob_1") == started
    # Cancelling is queued -> cancelled: refused once the job is in progress.
    assert not await store.swap_job(a_job(status="cancelled"), QUEUED, ttl=60)
    assert (await store.get_job("imgjob_1")).status == "in_progress"


async def test_swap_of_an_unknown_job_creates_nothing(store):  # noqa: F811
    assert not await store.swap_job(a_job(), QUEUED, ttl=60)
    assert await store.get_job("imgjob_1") is None


async def test_swap_sets_a_new_expiry_and_can_drop_a_result(store, clock):  # noqa: F811
    await store.put_job(a_job(status="in_progress", result=b"partial"), ttl=10)
    done = a_job(status="completed", completed_at=START, result=None)
    assert await store.swap_job(done, frozenset({"in_progress"}), ttl=100)
    clock.advance(50)
    found = await store.get_job("imgjob_1")
    assert found == done and found.result is None


async def test_concurrent_swaps_let_exactly_one_win(store):  # noqa: F811
    await store.put_job(a_job(), ttl=60)
    contenders = [a_job(status="in_progress", meta={"worker": n}) for n in range(8)]
    won = await asyncio.gather(*(store.swap_job(job, QUEUED, ttl=60) for job in contenders))
    assert sum(won) == 1
    winner = contenders[won.index(True)]
    assert await store.get_job("imgjob_1") == winner


async def test_a_large_result_is_kept_whole(store):  # noqa: F811
    result = bytes(range(256)) * 8192  # 2 MiB, every byte value
    await store.put_job(a_job(status="completed", result=result), ttl=60)
    assert (await store.get_job("imgjob_1")).result == result


async def test_jobs_refuse_with_503_while_redis_is_unreachable(clock):  # noqa: F811
    # Jobs promise to survive restarts and be seen by every replica; a local copy could not.
    resilient = ResilientStore(
        RedisStore(f"redis://127.0.0.1:{free_port()}/0", "x:", clock, socket_timeout=0.2),
        MemoryStore(clock),
        clock=clock,
    )
    await resilient.open()  # nothing listens: it starts degraded
    try:
        for call in (resilient.put_job(a_job(), 60), resilient.get_job("imgjob_1")):
            with pytest.raises(ApiError) as caught:
                await call
            assert caught.value.status == 503
            assert caught.value.code == "job_store_unavailable"
    finally:
        await resilient.close()
