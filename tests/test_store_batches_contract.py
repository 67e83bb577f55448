# ruff: noqa: F811  (the store/clock fixtures are imported from the main contract tests)
"""The batches-and-files store operations (documents, batch lines) behave the same on every
back-end: memory, SQLite, Redis and the resilient Redis store (Redis up). The `store` and
`clock` fixtures are the ones the main contract tests use."""

from __future__ import annotations

import asyncio

import pytest
from test_store_contract import clock, store  # noqa: F401  (pytest fixtures)

from flux_proxy.clock import FrozenClock

TTL = 86400.0


async def test_a_document_is_stored_read_listed_and_deleted(store):
    await store.put_doc("file", "file-1", {"id": "file-1", "bytes": 3, "tags": []})
    await store.put_doc("file", "file-2", {"id": "file-2", "bytes": 5, "tags": []})
    await store.put_doc("batch", "batch-1", {"id": "batch-1"})
    assert await store.get_doc("file", "file-1") == {"id": "file-1", "bytes": 3, "tags": []}
    assert await store.get_doc("file", "nope") is None
    assert sorted(d["id"] for d in await store.list_docs("file")) == ["file-1", "file-2"]
    assert await store.delete_doc("file", "file-1") is True
    assert await store.delete_doc("file", "file-1") is False
    assert [d["id"] for d in await store.list_docs("file")] == ["file-2"]


async def test_patch_doc_changes_only_when_the_condition_holds(store):
    await store.put_doc("batch", "b", {"id": "b", "status": "in_progress", "errors": None})
    assert await store.patch_doc("batch", "b", {"status": "x"}, when={"status": "failed"}) is None
    patched = await store.patch_doc(
        "batch", "b", {"status": "cancelling"}, when={"status": ["in_progress", "validating"]}
    )
    assert patched == {"id": "b", "status": "cancelling", "errors": None}
    assert (await store.get_doc("batch", "b"))["status"] == "cancelling"
    assert await store.patch_doc("batch", "missing", {"status": "x"}) is None
    # A field that is absent counts as None.
    assert await store.patch_doc("batch", "b", {"lease": 1}, when={"lease": None}) is not None
    assert await store.patch_doc("batch", "b", {"lease": 2}, when={"lease": None}) is None


async def test_concurrent_compare_and_set_lets_exactly_one_win(store):
    await store.put_doc("batch", "b", {"status": "in_progress"})
    results = await asyncio.gather(
        *(
            store.patch_doc("batch", "b", {"status": f"by-{i}"}, when={"status": "in_progress"})
            for i in range(8)
        )
    )
    assert sum(r is not None for r in results) == 1


async def test_each_line_is_claimed_once_and_finished_once_with_exact_counts(store):
    await store.add_lines("b1", ['{"n": 0}', '{"n": 1}', '{"n": 2}'], TTL)
    claims = [await store.claim_line("b1", "w1", 60) for _ in range(3)]
    assert sorted(c.index for c in claims) == [0, 1, 2]
    assert {c.payload for c in claims} == {'{"n": 0}', '{"n": 1}', '{"n": 2}'}
    assert await store.claim_line("b1", "w2", 60) is None  # all held
    counts = await store.finish_line(claims[0], "completed", '{"ok": 0}', neurons=10.5)
    assert counts["completed"] == 1 and counts["neurons"] == 10.5
    assert await store.finish_line(claims[0], "failed", "{}") is None  # recorded once
    await store.finish_line(claims[1], "failed", '{"error": 1}')
    counts = await store.finish_line(claims[2], "expired", '{"error": 2}')
    assert counts == {"completed": 1, "failed": 1, "expired": 1, "cancelled": 0, "neurons": 10.5}
    assert await store.line_counts("b1") == counts
    assert await store.line_results("b1") == [
        (0, "completed", '{"ok": 0}'),
        (1, "failed", '{"error": 1}'),
        (2, "expired", '{"error": 2}'),
    ]
    assert await store.claim_line("b1", "w2", 60) is None


async def test_a_released_line_is_claimed_again_and_unknown_batches_have_no_lines(store):
    await store.add_lines("b2", ['{"n": 0}'], TTL)
    first = await store.claim_line("b2", "w1", 60)
    await store.release_line(first)
    again = await store.claim_line("b2", "w2", 60)
    assert again is not None and again.index == 0 and again.payload == '{"n": 0}'
    assert await store.claim_line("nope", "w1", 60) is None
    assert (await store.line_counts("nope"))["completed"] == 0


async def test_a_line_whose_lease_lapsed_is_taken_over_and_the_first_finish_wins(
    store, clock: FrozenClock
):
    # Every runner passes the same lease (the setting): Redis measures a claim's idle time
    # when another runner asks, memory and SQLite note the lease's end when it is taken.
    lease = 0.2
    await store.add_lines("b3", ['{"n": 0}', '{"n": 1}'], TTL)
    dead = await store.claim_line("b3", "dead-worker", lease)
    clock.advance(1)  # memory and SQLite leases follow the store's clock,
    await asyncio.sleep(0.3)  # Redis's XAUTOCLAIM idle time follows real time
    taken = await store.claim_line("b3", "live-worker", lease)
    assert taken is not None and taken.index == dead.index == 0
    fresh = await store.claim_line("b3", "third", lease)
    assert fresh is not None and fresh.index == 1  # the taken-over claim holds again
    assert await store.finish_line(taken, "completed", '"taken"') is not None
    # The first holder comes back late: its result is not counted a second time.
    assert await store.finish_line(dead, "completed", '"late"') is None
    await store.release_line(dead)  # a stale release changes nothing either
    await store.finish_line(fresh, "completed", '"fresh"')
    assert await store.claim_line("b3", "fourth", lease) is None
    assert (await store.line_counts("b3"))["completed"] == 2
    assert (await store.line_results("b3"))[0] == (0, "completed", '"taken"')


async def test_dropped_lines_are_forgotten(store):
    await store.add_lines("b4", ['{"n": 0}'], TTL)
    claim = await store.claim_line("b4", "w", 60)
    await store.finish_line(claim, "completed", "{}")
    await store.drop_lines("b4")
    assert await store.line_results("b4") == []
    assert await store.claim_line("b4", "w", 60) is None


async def test_the_resilient_store_refuses_batch_state_while_redis_is_away(clock):
    # A batch queue has no sensible local copy: another replica could run the same line.
    from procs import free_port

    from flux_proxy.store.base import StoreUnavailable
    from flux_proxy.store.memory import MemoryStore
    from flux_proxy.store.redis import RedisStore
    from flux_proxy.store.resilient import ResilientStore

    away = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "test:", clock, socket_timeout=0.2)
    store = ResilientStore(away, MemoryStore(clock), clock=clock)
    await store.open()
    try:
        for call in (
            store.put_doc("batch", "b", {}),
            store.list_docs("batch"),
            store.claim_line("b", "w", 60),
            store.line_counts("b"),
        ):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await store.close()


async def test_a_released_line_waits_behind_the_lines_not_handed_out_yet(store):
    # The runner hands back a line it cannot run now (too dear for today): the next claim
    # must be another line, or that one line would hold the whole batch up.
    await store.add_lines("b5", ['{"n": 0}', '{"n": 1}', '{"n": 2}'], TTL)
    dear = await store.claim_line("b5", "w1", 60)
    assert dear.index == 0
    await store.release_line(dear)
    assert (await store.claim_line("b5", "w1", 60)).index == 1
    assert (await store.claim_line("b5", "w1", 60)).index == 2
    again = await store.claim_line("b5", "w1", 60)  # only then the line handed back
    assert again is not None and again.index == 0 and again.payload == '{"n": 0}'
    assert await store.claim_line("b5", "w1", 60) is None
