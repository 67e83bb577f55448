"""One contract, every back-end: MemoryStore, SqliteStore, RedisStore and ResilientStore (with
Redis up) behave the same.

Redis runs at REDIS_URL (default redis://127.0.0.1:6379/0); each test uses its own key prefix
and deletes its keys afterwards. The Redis cases are skipped only when no Redis answers.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis.asyncio as aioredis

from flux_proxy.clock import FrozenClock
from flux_proxy.store.base import Block, KeyUsage, UsageRow
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.redis import RedisStore
from flux_proxy.store.resilient import ResilientStore
from flux_proxy.store.sqlite import SqliteStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
START = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
DAY = "2025-06-15"
NEXT_DAY = "2025-06-16"


async def redis_or_skip() -> aioredis.Redis:
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.skip(f"no Redis answers at REDIS_URL ({type(exc).__name__})")
    return client


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture(params=["memory", "sqlite", "redis", "resilient"])
async def store(request, clock, tmp_path):
    if request.param == "memory":
        store = MemoryStore(clock)
        await store.open()
        yield store
        await store.close()
    elif request.param == "sqlite":
        store = SqliteStore(tmp_path / "state.sqlite3", clock)
        await store.open()
        yield store
        await store.close()
    else:
        admin = await redis_or_skip()
        prefix = f"test-{uuid.uuid4().hex}:"
        store = RedisStore(REDIS_URL, prefix, clock)
        if request.param == "resilient":  # Redis with its local safety net, Redis being up
            store = ResilientStore(store, MemoryStore(clock), clock=clock)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            keys = [k async for k in admin.scan_iter(match=f"{prefix}*")]
            if keys:
                await admin.delete(*keys)
            await admin.aclose()


# --- blocks --------------------------------------------------------------------------------


async def test_set_block_is_returned_for_its_account_only(store, clock):
    block = Block("cooling", START + 60, "rate limited", code=None, since=START)
    await store.set_block("1:aaaa", block)

    assert await store.get_blocks(["1:aaaa", "2:bbbb"]) == {"1:aaaa": block}
    assert await store.get_blocks(["2:bbbb"]) == {}
    assert await store.get_blocks([]) == {}


async def test_clear_block_removes_it(store):
    await store.set_block("1:aaaa", Block("disabled", None, "bad token", code=10000))
    await store.clear_block("1:aaaa")
    await store.clear_block("never-blocked")  # clearing nothing is fine

    assert await store.get_blocks(["1:aaaa"]) == {}


async def test_new_block_replaces_the_old_one(store):
    await store.set_block("1:aaaa", Block("cooling", START + 15, "capacity", code=3040))
    parked = Block("parked", START + 3600, "daily allocation spent", code=3036)
    await store.set_block("1:aaaa", parked)

    assert await store.get_blocks(["1:aaaa"]) == {"1:aaaa": parked}


async def test_block_stops_being_active_when_its_time_passes(store, clock):
    await store.set_block("1:aaaa", Block("cooling", START + 60, "rate limited"))
    assert (await store.get_blocks(["1:aaaa"]))["1:aaaa"].active(clock.now())

    clock.advance(61)

    blocks = await store.get_blocks(["1:aaaa"])
    assert all(not b.active(clock.now()) for b in blocks.values())


async def test_block_without_end_stays_active(store, clock):
    await store.set_block("1:aaaa", Block("disabled", None, "account blocked", code=9109))
    clock.advance(30 * 86400 - 1)

    assert (await store.get_blocks(["1:aaaa"]))["1:aaaa"].active(clock.now())


# --- neuron ledger -------------------------------------------------------------------------


async def test_reservation_within_budget_is_held(store):
    reservation = await store.try_reserve("1:aaaa", DAY, 400.0, budget=1000.0, ttl=300)

    assert reservation is not None
    assert (reservation.account, reservation.day, reservation.amount) == ("1:aaaa", DAY, 400.0)
    usage = (await store.usage(["1:aaaa"], DAY))["1:aaaa"]
    assert (usage.used, usage.reserved) == (0.0, 400.0)
    assert usage.remaining(1000.0) == 600.0


async def test_reservation_over_budget_is_refused_and_changes_nothing(store):
    await store.record_spend("1:aaaa", DAY, 500.0)
    await store.try_reserve("1:aaaa", DAY, 300.0, budget=1000.0, ttl=300)

    refused = await store.try_reserve("1:aaaa", DAY, 201.0, budget=1000.0, ttl=300)

    assert refused is None
    usage = (await store.usage(["1:aaaa"], DAY))["1:aaaa"]
    assert (usage.used, usage.reserved) == (500.0, 300.0)
    # Exactly filling the budget is still allowed.
    assert await store.try_reserve("1:aaaa", DAY, 200.0, budget=1000.0, ttl=300) is not None


async def test_settle_turns_the_hold_into_the_actual_spend(store):
    reservation = await store.try_reserve("1:aaaa", DAY, 400.0, budget=1000.0, ttl=300)

    await store.settle(reservation, 123.5)

    usage = (await store.usage(["1:aaaa"], DAY))["1:aaaa"]
    assert (usage.used, usage.reserved) == (123.5, 0.0)


async def test_release_drops_the_hold_without_spending(store):
    reservation = await store.try_reserve("1:aaaa", DAY, 900.0, budget=1000.0, ttl=300)
    assert await store.try_reserve("1:aaaa", DAY, 200.0, budget=1000.0, ttl=300) is None

    await store.release(reservation)

    usage = (await store.usage(["1:aaaa"], DAY))["1:aaaa"]
    assert (usage.used, usage.reserved) == (0.0, 0.0)
    assert await store.try_reserve("1:aaaa", DAY, 200.0, budget=1000.0, ttl=300) is not None


async def test_unlimited_budget_always_grants(store):
    await store.record_spend("1:aaaa", DAY, 1e9)

    reservation = await store.try_reserve("1:aaaa", DAY, 5e8, budget=None, ttl=300)

    assert reservation is not None
    assert (await store.usage(["1:aaaa"], DAY))["1:aaaa"].remaining(None) is None


async def test_lapsed_reservation_stops_counting(store, clock):
    await store.try_reserve("1:aaaa", DAY, 1000.0, budget=1000.0, ttl=120)
    assert await store.try_reserve("1:aaaa", DAY, 1.0, budget=1000.0, ttl=120) is None

    clock.advance(121)

    assert (await store.usage(["1:aaaa"], DAY))["1:aaaa"].reserved == 0.0
    assert await store.try_reserve("1:aaaa", DAY, 1000.0, budget=1000.0, ttl=120) is not None


async def test_settling_a_lapsed_reservation_still_counts_the_spend(store, clock):
    reservation = await store.try_reserve("1:aaaa", DAY, 100.0, budget=1000.0, ttl=10)
    clock.advance(11)

    await store.settle(reservation, 80.0)

    assert (await store.usage(["1:aaaa"], DAY))["1:aaaa"].used == 80.0


async def test_record_spend_adds_up_and_counts_against_the_budget(store):
    await store.record_spend("1:aaaa", DAY, 600.0)
    await store.record_spend("1:aaaa", DAY, 350.25)

    assert (await store.usage(["1:aaaa"], DAY))["1:aaaa"].used == 950.25
    assert await store.try_reserve("1:aaaa", DAY, 50.0, budget=1000.0, ttl=300) is None
    assert await store.try_reserve("1:aaaa", DAY, 49.75, budget=1000.0, ttl=300) is not None


async def test_usage_is_kept_per_utc_day(store):
    await store.record_spend("1:aaaa", DAY, 1000.0)
    assert await store.try_reserve("1:aaaa", DAY, 1.0, budget=1000.0, ttl=300) is None

    # A new UTC day starts with the whole budget.
    assert await store.try_reserve("1:aaaa", NEXT_DAY, 700.0, budget=1000.0, ttl=300)

    usage = await store.usage(["1:aaaa"], NEXT_DAY)
    assert (usage["1:aaaa"].used, usage["1:aaaa"].reserved) == (0.0, 700.0)
    assert (await store.usage(["1:aaaa"], DAY))["1:aaaa"].used == 1000.0


async def test_usage_is_kept_per_account(store):
    await store.record_spend("1:aaaa", DAY, 10.0)
    await store.try_reserve("2:bbbb", DAY, 20.0, budget=None, ttl=300)

    usage = await store.usage(["1:aaaa", "2:bbbb", "3:cccc"], DAY)

    assert {a: (u.used, u.reserved) for a, u in usage.items()} == {
        "1:aaaa": (10.0, 0.0),
        "2:bbbb": (0.0, 20.0),
        "3:cccc": (0.0, 0.0),
    }


async def test_concurrent_reservations_never_overspend(store):
    results = await asyncio.gather(
        *(store.try_reserve("1:aaaa", DAY, 7.0, budget=100.0, ttl=300) for _ in range(60))
    )

    granted = [r for r in results if r is not None]
    assert len(granted) == 100 // 7
    assert len({r.id for r in granted}) == len(granted)
    assert (await store.usage(["1:aaaa"], DAY))["1:aaaa"].reserved == 7.0 * (100 // 7)


# --- key quotas and usage --------------------------------------------------------------------

KEEP = 90


def _row(key="alice", account="1", model="flux-2-dev", day=DAY, **counts) -> UsageRow:
    return UsageRow(day, key, account, model, **counts)


async def test_key_reservation_holds_images_and_neurons_until_settled(store):
    hold = await store.try_reserve_key("alice", DAY, 2, 40.0, 5, None, ttl=300)

    assert hold is not None and (hold.key, hold.day, hold.images) == ("alice", DAY, 2)
    assert await store.key_usage("alice", DAY) == KeyUsage(0, 0.0, 2, 40.0)
    await store.settle_key(hold, [_row(images=2, neurons=31.5, requests=1)], KEEP)
    assert await store.key_usage("alice", DAY) == KeyUsage(2, 31.5, 0, 0.0)


async def test_key_reservation_past_either_limit_is_refused_and_changes_nothing(store):
    await store.record_usage([_row(images=3, neurons=90.0, requests=3)], KEEP)

    assert await store.try_reserve_key("alice", DAY, 3, 1.0, 5, None, ttl=300) is None
    assert await store.try_reserve_key("alice", DAY, 1, 11.0, None, 100.0, ttl=300) is None
    assert await store.key_usage("alice", DAY) == KeyUsage(3, 90.0, 0, 0.0)
    # Exactly reaching a limit is allowed; other keys and other days are not affected.
    assert await store.try_reserve_key("alice", DAY, 2, 10.0, 5, 100.0, ttl=300) is not None
    assert await store.try_reserve_key("bob", DAY, 5, 100.0, 5, 100.0, ttl=300) is not None
    assert await store.try_reserve_key("alice", NEXT_DAY, 5, 0.0, 5, None, ttl=300) is not None


async def test_released_key_reservation_frees_the_quota(store):
    hold = await store.try_reserve_key("alice", DAY, 2, 0.0, 2, None, ttl=300)
    assert await store.try_reserve_key("alice", DAY, 1, 0.0, 2, None, ttl=300) is None

    await store.release_key(hold)

    assert await store.key_usage("alice", DAY) == KeyUsage()
    assert await store.try_reserve_key("alice", DAY, 2, 0.0, 2, None, ttl=300) is not None


async def test_lapsed_key_reservation_stops_counting(store, clock):
    await store.try_reserve_key("alice", DAY, 2, 0.0, 2, None, ttl=60)
    clock.advance(61)

    assert (await store.key_usage("alice", DAY)).reserved_images == 0
    assert await store.try_reserve_key("alice", DAY, 2, 0.0, 2, None, ttl=60) is not None


async def test_concurrent_key_reservations_never_pass_the_limit(store):
    results = await asyncio.gather(
        *(store.try_reserve_key("alice", DAY, 1, 3.0, 7, None, ttl=300) for _ in range(40))
    )

    granted = [r for r in results if r is not None]
    assert len(granted) == 7 and len({r.id for r in granted}) == 7


async def test_usage_rows_add_up_per_day_key_account_and_model(store):
    hold = await store.try_reserve_key("alice", DAY, 2, 20.0, None, None, ttl=300)
    await store.settle_key(
        hold,
        [_row(images=1, neurons=9.5, requests=1), _row(account="2", images=1, neurons=10.0)],
        KEEP,
    )
    await store.record_usage(
        [
            _row(images=1, neurons=9.5, requests=1),
            _row(account="", requests=1, cache_hits=1, neurons_saved=9.5),
            _row(key="bob", model="flux-1-schnell", images=1, neurons=2.25, requests=1),
            _row(day=NEXT_DAY, images=1, neurons=1.0, requests=1),
        ],
        KEEP,
    )

    rows = {(r.day, r.key, r.account, r.model): r for r in await store.usage_rows(DAY, DAY)}
    assert rows == {
        (DAY, "alice", "1", "flux-2-dev"): _row(images=2, neurons=19.0, requests=2),
        (DAY, "alice", "2", "flux-2-dev"): _row(account="2", images=1, neurons=10.0),
        (DAY, "alice", "", "flux-2-dev"): _row(
            account="", requests=1, cache_hits=1, neurons_saved=9.5
        ),
        (DAY, "bob", "1", "flux-1-schnell"): _row(
            key="bob", model="flux-1-schnell", images=1, neurons=2.25, requests=1
        ),
    }
    only_bob = await store.usage_rows(DAY, NEXT_DAY, key="bob")
    assert [(r.key, r.images) for r in only_bob] == [("bob", 1)]
    assert len(await store.usage_rows(DAY, NEXT_DAY, key="alice")) == 4
    # Cache hits are served, not made: they do not count against the key's quota.
    assert await store.key_usage("alice", DAY) == KeyUsage(3, 29.0, 0, 0.0)


async def test_usage_rows_older_than_the_history_are_forgotten(store, clock):
    await store.record_usage([_row(images=1, requests=1)], keep_days=2)
    clock.advance(3 * 86400)

    await store.record_usage([_row(day="2025-06-18", images=1, requests=1)], keep_days=2)

    if store.name != "redis":  # Redis forgets by TTL in real seconds, not the test's clock
        assert await store.usage_rows(DAY, DAY) == []
    assert len(await store.usage_rows("2025-06-18", "2025-06-18")) == 1


# --- blobs ---------------------------------------------------------------------------------


async def test_blob_round_trips_bytes_and_content_type(store):
    data = bytes(range(256)) * 100

    await store.put_blob("img-1", data, "image/png", ttl=3600)

    assert await store.get_blob("img-1") == (data, "image/png")
    assert await store.get_blob("img-unknown") is None


async def test_blob_expires_after_its_ttl(store, clock):
    await store.put_blob("img-1", b"\x89PNG...", "image/png", ttl=60)
    clock.advance(59)
    assert await store.get_blob("img-1") is not None

    clock.advance(2)

    assert await store.get_blob("img-1") is None


async def test_putting_a_blob_again_replaces_it(store):
    await store.put_blob("img-1", b"old", "image/png", ttl=60)
    await store.put_blob("img-1", b"new", "image/jpeg", ttl=60)

    assert await store.get_blob("img-1") == (b"new", "image/jpeg")


# --- work: markers ------------------------------------------------------------------------


async def test_claim_is_taken_once_and_names_its_holder_to_others(store):
    assert await store.claim("idem:alice:k1", "fp-a replica-1", ttl=60) is None

    assert await store.claim("idem:alice:k1", "fp-b replica-2", ttl=60) == "fp-a replica-1"
    assert await store.holder_of("idem:alice:k1") == "fp-a replica-1"
    assert await store.holder_of("idem:alice:k2") is None


async def test_unclaim_releases_only_for_the_holder(store):
    await store.claim("m", "holder-1", ttl=60)

    await store.unclaim("m", "holder-2")
    assert await store.holder_of("m") == "holder-1"

    await store.unclaim("m", "holder-1")
    assert await store.holder_of("m") is None
    assert await store.claim("m", "holder-2", ttl=60) is None


async def test_claim_lapses_after_its_ttl_and_can_be_taken_again(store, clock):
    await store.claim("m", "crashed replica", ttl=30)
    clock.advance(31)

    assert await store.holder_of("m") is None
    assert await store.claim("m", "next", ttl=30) is None
    await store.unclaim("m", "crashed replica")  # a late release does not drop the new claim
    assert await store.holder_of("m") == "next"


async def test_concurrent_claims_have_exactly_one_winner(store):
    results = await asyncio.gather(*(store.claim("m", f"h{i}", ttl=60) for i in range(20)))

    winners = [i for i, result in enumerate(results) if result is None]
    assert len(winners) == 1
    assert all(result == f"h{winners[0]}" for result in results if result is not None)


# --- work: kept results --------------------------------------------------------------------


async def test_result_round_trips_and_expires(store, clock):
    data = b"fingerprint\n" + bytes(range(256)) * 1000
    await store.put_result("fp:alice:abc", data, ttl=900)

    assert await store.get_result("fp:alice:abc") == data
    assert await store.get_result("fp:bob:abc") is None
    clock.advance(901)
    assert await store.get_result("fp:alice:abc") is None


async def test_putting_a_result_again_replaces_it(store):
    await store.put_result("r", b"old", ttl=60)
    await store.put_result("r", b"new", ttl=60)

    assert await store.get_result("r") == b"new"


# --- work: the seeded cache ------------------------------------------------------------------


async def test_cache_entry_round_trips_and_counts_in_stats(store):
    assert await store.cache_stats() == {"entries": 0, "bytes": 0}
    await store.cache_put("k1", b"x" * 100, ttl=3600, max_bytes=10_000)
    await store.cache_put("k2", b"y" * 50, ttl=3600, max_bytes=10_000)

    assert await store.cache_get("k1") == b"x" * 100
    assert await store.cache_get("unknown") is None
    assert await store.cache_stats() == {"entries": 2, "bytes": 150}


async def test_cache_entry_expires_after_its_ttl(store, clock):
    await store.cache_put("k1", b"x" * 10, ttl=60, max_bytes=1000)
    clock.advance(61)

    assert await store.cache_get("k1") is None
    assert await store.cache_stats() == {"entries": 0, "bytes": 0}


async def test_cache_evicts_least_recently_used_beyond_max_bytes(store):
    for key in ("a", "b", "c"):
        await store.cache_put(key, b"." * 100, ttl=3600, max_bytes=300)
    assert await store.cache_get("a") is not None  # "b" is now the least recently used

    await store.cache_put("d", b"." * 100, ttl=3600, max_bytes=300)

    assert await store.cache_get("b") is None
    assert [await store.cache_get(k) is not None for k in ("a", "c", "d")] == [True] * 3
    assert await store.cache_stats() == {"entries": 3, "bytes": 300}


async def test_cache_size_stays_exact_through_drops_and_a_long_eviction(store):
    # More entries than one round of eviction looks at, and drops in between: the size the
    # store keeps for its puts must stay the rows' own.
    for i in range(150):
        await store.cache_put(f"k{i}", b"." * 10, ttl=3600, max_bytes=10_000)
    for i in range(0, 150, 3):
        await store.cache_drop(f"k{i}")
    assert await store.cache_stats() == {"entries": 100, "bytes": 1000}

    await store.cache_put("big", b"." * 900, ttl=3600, max_bytes=1000)

    # The 90 least recently used go: k1, k2, k4, ... (never-dropped keys, oldest first).
    kept = [i for i in range(150) if i % 3 and await store.cache_get(f"k{i}") is not None]
    assert kept == [i for i in range(150) if i % 3][-10:]
    assert await store.cache_stats() == {"entries": 11, "bytes": 1000}


async def test_cache_replacing_an_entry_counts_its_size_once(store):
    await store.cache_put("k", b"." * 100, ttl=3600, max_bytes=1000)
    await store.cache_put("k", b"," * 40, ttl=3600, max_bytes=1000)

    assert await store.cache_get("k") == b"," * 40
    assert await store.cache_stats() == {"entries": 1, "bytes": 40}


async def test_cache_entry_larger_than_the_cache_is_not_kept(store):
    await store.cache_put("small", b"." * 10, ttl=3600, max_bytes=100)
    await store.cache_put("huge", b"." * 101, ttl=3600, max_bytes=100)

    assert await store.cache_get("huge") is None
    assert await store.cache_get("small") is not None


async def test_cache_drop_removes_the_entry(store):
    await store.cache_put("k", b"." * 10, ttl=3600, max_bytes=100)
    await store.cache_drop("k")

    assert await store.cache_get("k") is None
    assert await store.cache_stats() == {"entries": 0, "bytes": 0}


# --- health --------------------------------------------------------------------------------


async def test_status_names_the_backend_and_says_ok(store):
    status = await store.status()

    assert status["backend"] == store.name
    assert status["ok"] is True
    assert isinstance(status["detail"], str) and status["detail"]
