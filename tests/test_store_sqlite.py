"""SqliteStore beyond the shared contract: several processes on one file, durability through
`kill -9`, blob files on disk and housekeeping; and the store factory."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time

import pytest
from store_workers import persist_then_get_killed, run_competing_workers

from flux_proxy.clock import Clock, FrozenClock, utc_day
from flux_proxy.settings import ConfigError, Settings
from flux_proxy.store.base import Block
from flux_proxy.store.factory import open_store
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.resilient import ResilientStore
from flux_proxy.store.sqlite import SWEEP_INTERVAL, SqliteStore

START = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
DAY = "2025-06-15"


async def test_processes_sharing_one_file_never_overspend(tmp_path):
    path = tmp_path / "state.sqlite3"
    today = utc_day(time.time())  # the checking store below uses the real clock

    granted = await asyncio.to_thread(
        run_competing_workers,
        "sqlite",
        str(path),
        "",
        "1:aaaa",
        today,
        tmp_path / "go",
        workers=4,
        tries=25,
        amount=3.0,
        budget=100.0,
    )

    assert sum(granted) == 100 // 3
    store = SqliteStore(path, Clock())
    await store.open()
    try:
        assert (await store.usage(["1:aaaa"], today))["1:aaaa"].reserved == 3.0 * (100 // 3)
    finally:
        await store.close()


async def test_committed_state_survives_kill_9(tmp_path):
    path = tmp_path / "state.sqlite3"
    today = utc_day(time.time())
    until = time.time() + 3600

    status = await asyncio.to_thread(persist_then_get_killed, path, "1:aaaa", today, 9876.5, until)

    assert status == -signal.SIGKILL
    store = SqliteStore(path, Clock())
    await store.open()
    try:
        blocks = await store.get_blocks(["1:aaaa"])
        assert blocks["1:aaaa"].kind == "parked"
        assert blocks["1:aaaa"].until == until
        assert blocks["1:aaaa"].code == 3036
        assert (await store.usage(["1:aaaa"], today))["1:aaaa"].used == 9876.5
    finally:
        await store.close()


async def test_two_stores_on_one_file_see_each_other(tmp_path):
    clock = FrozenClock(START)
    first = SqliteStore(tmp_path / "state.sqlite3", clock)
    second = SqliteStore(tmp_path / "state.sqlite3", clock)
    await first.open()
    await second.open()
    try:
        await first.try_reserve("1:aaaa", DAY, 60.0, budget=100.0, ttl=300)
        assert await second.try_reserve("1:aaaa", DAY, 60.0, budget=100.0, ttl=300) is None
        await second.put_blob("img", b"pixels", "image/webp", ttl=60)
        assert await first.get_blob("img") == (b"pixels", "image/webp")
    finally:
        await first.close()
        await second.close()


@pytest.fixture
async def store(tmp_path):
    store = SqliteStore(tmp_path / "data" / "state.sqlite3", FrozenClock(START))
    await store.open()
    yield store
    await store.close()


def blob_files(store: SqliteStore) -> list[str]:
    return sorted(p.name for p in store.blob_dir.iterdir())


async def test_open_creates_the_data_dir_in_wal_mode(store):
    assert store.path.exists()
    assert store.blob_dir == store.path.parent / "images"
    assert store.blob_dir.is_dir()
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_blobs_are_whole_files_under_images(store):
    await store.put_blob("img-1", b"first image", "image/png", ttl=60)

    (name,) = blob_files(store)
    assert (store.blob_dir / name).read_bytes() == b"first image"


async def test_replacing_a_blob_deletes_the_old_file(store):
    await store.put_blob("img-1", b"old", "image/png", ttl=60)
    await store.put_blob("img-1", b"new", "image/png", ttl=60)

    (name,) = blob_files(store)
    assert (store.blob_dir / name).read_bytes() == b"new"


async def test_sweep_deletes_expired_blobs_and_their_files(store):
    await store.put_blob("short", b"short-lived", "image/png", ttl=60)
    await store.put_blob("long", b"long-lived", "image/png", ttl=600)
    store._clock.advance(61)

    await store.sweep()

    assert [(store.blob_dir / n).read_bytes() for n in blob_files(store)] == [b"long-lived"]
    assert await store.get_blob("long") == (b"long-lived", "image/png")


async def test_sweep_removes_files_a_crash_left_behind_once_they_are_old(store):
    await store.put_blob("kept", b"kept", "image/png", ttl=600)
    stale = store.blob_dir / ".tmp-crashed-mid-write"
    stale.write_bytes(b"half an image")
    fresh = store.blob_dir / "being-written-right-now"
    fresh.write_bytes(b"another process, mid put")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    await store.sweep()

    assert not stale.exists()
    assert fresh.exists()
    assert await store.get_blob("kept") == (b"kept", "image/png")


async def test_sweep_prunes_lapsed_reservations_and_old_usage_days(store):
    await store.record_spend("1:aaaa", "2025-06-11", 5.0)  # more than 3 days before DAY
    await store.record_spend("1:aaaa", "2025-06-13", 6.0)
    await store.record_spend("1:aaaa", DAY, 7.0)
    await store.try_reserve("1:aaaa", DAY, 1.0, budget=None, ttl=10)
    await store.try_reserve("1:aaaa", DAY, 2.0, budget=None, ttl=1000)
    store._clock.advance(11)

    await store.sweep()

    with sqlite3.connect(store.path) as conn:
        days = [d for (d,) in conn.execute("SELECT day FROM usage ORDER BY day")]
        held = [a for (a,) in conn.execute("SELECT amount FROM reservations")]
    assert days == ["2025-06-13", DAY]
    assert held == [2.0]


async def test_status_points_at_the_file(store):
    status = await store.status()

    assert status == {"backend": "sqlite", "ok": True, "detail": f"state in {store.path}"}


async def test_store_used_before_open_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="before open"):
        await SqliteStore(tmp_path / "s.sqlite3").get_blob("x")


# --- factory -------------------------------------------------------------------------------


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


async def test_factory_defaults_to_sqlite_in_the_data_dir(tmp_path):
    store = open_store(settings(data_dir=tmp_path / "d", redis_url=None), Clock())

    assert isinstance(store, SqliteStore)
    await store.open()
    try:
        assert (tmp_path / "d" / "state.sqlite3").exists()
        assert (tmp_path / "d" / "images").is_dir()
    finally:
        await store.close()


def test_factory_builds_memory_and_redis_backends(tmp_path):
    assert isinstance(open_store(settings(state_backend="memory"), Clock()), MemoryStore)
    store = open_store(settings(redis_url="redis://127.0.0.1:6379/0"), Clock())
    assert isinstance(store, ResilientStore)
    assert store.primary.prefix == "flux-proxy:"


def test_factory_refuses_redis_without_a_url():
    with pytest.raises(ConfigError, match="REDIS_URL"):
        open_store(settings(state_backend="redis", redis_url=None), Clock())


async def test_sqlite_block_keeps_every_field(store):
    block = Block("disabled", None, "token rejected", code=10000, since=START - 5)
    await store.set_block("1:aaaa", block)

    assert await store.get_blocks(["1:aaaa"]) == {"1:aaaa": block}


async def test_busy_store_sweeps_by_itself_every_few_minutes(store):
    await store.put_blob("old", b"expired image", "image/png", ttl=60)
    store._clock.advance(SWEEP_INTERVAL)

    await store.put_blob("new", b"fresh image", "image/png", ttl=60)

    assert [(store.blob_dir / n).read_bytes() for n in blob_files(store)] == [b"fresh image"]
