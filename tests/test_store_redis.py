"""RedisStore beyond the shared contract (replicas in separate processes, key prefixes and TTLs,
no credentials shown) and ResilientStore against a Redis that really goes away and comes back.

The shared Redis is REDIS_URL (default redis://127.0.0.1:6379/0); the outage tests start their
own throwaway `redis-server` on a free port so they can kill it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from store_workers import run_competing_workers

from flux_proxy.clock import Clock, FrozenClock, utc_day
from flux_proxy.store.base import Block
from flux_proxy.store.memory import MemoryStore
from flux_proxy.store.redis import OPEN_BLOCK_TTL, USAGE_TTL, RedisStore, mask_url
from flux_proxy.store.resilient import DEGRADED_DETAIL, ResilientStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
DAY = "2025-06-15"
PASSWORD = "s3cret-redis-pass"


# --- the shared Redis ----------------------------------------------------------------------


@pytest.fixture
async def admin():
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        pytest.skip(f"no Redis answers at REDIS_URL ({type(exc).__name__})")
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(admin):
    prefix = f"test-{uuid.uuid4().hex}:"
    yield prefix
    keys = [k async for k in admin.scan_iter(match=f"{prefix}*")]
    if keys:
        await admin.delete(*keys)


@pytest.fixture
async def store(prefix):
    store = RedisStore(REDIS_URL, prefix, FrozenClock(START))
    await store.open()
    yield store
    await store.close()


async def test_replicas_in_separate_processes_never_overspend(prefix, tmp_path):
    today = utc_day(time.time())  # the workers use the real clock

    granted = await asyncio.to_thread(
        run_competing_workers,
        "redis",
        REDIS_URL,
        prefix,
        "1:aaaa",
        today,
        tmp_path / "go",
        workers=4,
        tries=25,
        amount=3.0,
        budget=100.0,
    )

    assert sum(granted) == 100 // 3
    store = RedisStore(REDIS_URL, prefix, Clock())
    await store.open()
    try:
        assert (await store.usage(["1:aaaa"], today))["1:aaaa"].reserved == 3.0 * (100 // 3)
    finally:
        await store.close()


async def test_every_key_carries_the_prefix_and_a_ttl(store, admin, prefix):
    await store.set_block("1:aaaa", Block("cooling", START + 90, "rate limited"))
    await store.set_block("2:bbbb", Block("disabled", None, "bad token", code=10000))
    reservation = await store.try_reserve("1:aaaa", DAY, 10.0, budget=100.0, ttl=300)
    await store.try_reserve("1:aaaa", DAY, 10.0, budget=100.0, ttl=300)
    await store.settle(reservation, 8.0)
    await store.record_spend("2:bbbb", DAY, 3.0)
    await store.put_blob("img", b"png", "image/png", ttl=3600)

    keys = sorted([k.decode() async for k in admin.scan_iter(match=f"{prefix}*")])
    ttls = {k.removeprefix(prefix): await admin.ttl(k) for k in keys}

    assert set(ttls) == {
        "block:1:aaaa",
        "block:2:bbbb",
        f"usage:1:aaaa:{DAY}",
        f"usage:2:bbbb:{DAY}",
        f"res:1:aaaa:{DAY}",
        "blob:img",
    }
    assert 85 <= ttls["block:1:aaaa"] <= 90  # the block's own end
    assert OPEN_BLOCK_TTL - 5 <= ttls["block:2:bbbb"] <= OPEN_BLOCK_TTL
    assert USAGE_TTL - 5 <= ttls[f"usage:1:aaaa:{DAY}"] <= USAGE_TTL
    assert 300 <= ttls[f"res:1:aaaa:{DAY}"] <= 360  # outlives its holds, not much more
    assert 3595 <= ttls["blob:img"] <= 3600


async def test_two_prefixes_never_see_each_other(store, prefix):
    other = RedisStore(REDIS_URL, prefix + "other:", FrozenClock(START))
    await other.open()
    try:
        await store.set_block("1:aaaa", Block("parked", START + 60, "spent"))
        await store.record_spend("1:aaaa", DAY, 50.0)

        assert await other.get_blocks(["1:aaaa"]) == {}
        assert (await other.usage(["1:aaaa"], DAY))["1:aaaa"].used == 0.0
    finally:
        await other.close()


def test_masked_url_hides_the_password():
    assert mask_url(f"redis://:{PASSWORD}@cache:6380/2") == "redis://:***@cache:6380/2"
    assert mask_url(f"rediss://app:{PASSWORD}@cache/0") == "rediss://app:***@cache/0"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


async def test_status_shows_where_but_never_the_password(prefix):
    store = RedisStore(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", prefix)
    with pytest.raises(RedisConnectionError):
        await store.open()  # nothing listens there
    status = await store.status()
    await store.close()

    assert status["backend"] == "redis" and status["ok"] is False
    assert PASSWORD not in str(status)


# --- a Redis that goes away ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayRedis:
    """A private redis-server with a password, no persistence, that tests may kill."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)


@pytest.fixture
def throwaway(tmp_path):
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def events():
    """The flux_proxy log records, captured whatever logging setup other tests left behind."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("flux_proxy")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def quick(call: Awaitable, limit: float = 2.0):
    """Await `call`, failing the test if it takes longer than `limit` seconds."""
    started = time.monotonic()
    result = await asyncio.wait_for(call, timeout=limit + 1)
    assert time.monotonic() - started < limit
    return result


def rendered(records: list[logging.LogRecord]) -> str:
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in records)


async def test_outage_serves_locally_then_resyncs_what_it_learned(throwaway, events):
    clock = FrozenClock(START)
    store = ResilientStore(
        RedisStore(throwaway.url, "fp:", clock), MemoryStore(clock), clock=clock, retry_interval=3
    )
    await store.open()
    before = Block("parked", START + 3600, "daily allocation spent", code=3036)
    await store.set_block("1:aaaa", before)
    await store.record_spend("1:aaaa", DAY, 100.0)
    in_flight = await store.try_reserve("2:bbbb", DAY, 40.0, budget=1000.0, ttl=300)
    assert (await store.status())["ok"] is True

    throwaway.kill()

    # Everything keeps working, on local state, and nothing hangs.
    assert await quick(store.status()) == {
        "backend": "redis",
        "ok": False,
        "serving": True,
        "detail": DEGRADED_DETAIL,
    }
    learned = Block("disabled", None, "token rejected", code=10000)
    await quick(store.set_block("2:bbbb", learned))
    await quick(store.settle(in_flight, 35.0))  # a hold made in Redis, settled in the outage
    await quick(store.record_spend("1:aaaa", DAY, 5.0))
    local = await quick(store.try_reserve("3:cccc", DAY, 20.0, budget=1000.0, ttl=300))
    assert local is not None
    await quick(store.settle(local, 12.0))
    await quick(store.put_blob("img", b"made during the outage", "image/png", ttl=600))
    blocks = await quick(store.get_blocks(["1:aaaa", "2:bbbb"]))
    assert blocks == {"1:aaaa": before, "2:bbbb": learned}  # the pre-outage view was mirrored
    usage = await quick(store.usage(["1:aaaa", "2:bbbb", "3:cccc"], DAY))
    assert {a: u.used for a, u in usage.items()} == {
        "1:aaaa": 105.0,
        "2:bbbb": 35.0,
        "3:cccc": 12.0,
    }
    assert await quick(store.get_blob("img")) == (b"made during the outage", "image/png")

    throwaway.start()  # same port, empty: no persistence
    fresh = throwaway.client()
    try:
        # Before the retry interval has passed the store does not even look.
        clock.advance(2)
        assert (await quick(store.status()))["ok"] is False
        assert await fresh.get("fp:block:2:bbbb") is None

        clock.advance(1.5)
        assert await quick(store.status()) == {
            "backend": "redis",
            "ok": True,
            "detail": f"shared state in redis at 127.0.0.1:{throwaway.port}",
        }

        # What was learned during the outage is now in Redis, for every replica.
        assert await fresh.exists("fp:block:2:bbbb")
        assert float(await fresh.get(f"fp:usage:1:aaaa:{DAY}")) == 5.0
        assert float(await fresh.get(f"fp:usage:2:bbbb:{DAY}")) == 35.0
        assert float(await fresh.get(f"fp:usage:3:cccc:{DAY}")) == 12.0
        assert await fresh.hget("fp:blob:img", "data") == b"made during the outage"
        assert await store.get_blocks(["2:bbbb"]) == {"2:bbbb": learned}
    finally:
        await fresh.aclose()
        await store.close()

    warnings = [r for r in events if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["state_store_unreachable"]  # once, not per call
    assert "state_store_recovered" in [r.getMessage() for r in events]
    assert "***" in rendered(events)
    assert PASSWORD not in rendered(events)


async def test_store_starts_on_local_state_when_redis_is_down(tmp_path, events):
    clock = FrozenClock(START)
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    store = ResilientStore(RedisStore(url, "fp:", clock), MemoryStore(clock), clock=clock)

    await quick(store.open())
    try:
        reservation = await quick(store.try_reserve("1:aaaa", DAY, 600.0, 1000.0, ttl=300))
        assert await quick(store.try_reserve("1:aaaa", DAY, 600.0, 1000.0, ttl=300)) is None
        await quick(store.release(reservation))
        assert (await quick(store.usage(["1:aaaa"], DAY)))["1:aaaa"].reserved == 0.0
        assert (await quick(store.status()))["detail"] == DEGRADED_DETAIL
    finally:
        await store.close()
    assert PASSWORD not in rendered(events)


async def test_reservation_made_locally_is_settled_locally_after_redis_returns(throwaway):
    clock = FrozenClock(START)
    store = ResilientStore(
        RedisStore(throwaway.url, "fp:", clock), MemoryStore(clock), clock=clock, retry_interval=1
    )
    await store.open()
    throwaway.kill()
    local = await quick(store.try_reserve("1:aaaa", DAY, 900.0, budget=1000.0, ttl=300))
    assert local is not None

    throwaway.start()
    clock.advance(1)
    await quick(store.settle(local, 700.0))

    fresh = throwaway.client()
    try:
        assert (await store.status())["ok"] is True
        assert float(await fresh.get(f"fp:usage:1:aaaa:{DAY}")) == 700.0
        assert await fresh.exists(f"fp:res:1:aaaa:{DAY}") == 0  # Redis never held it
    finally:
        await fresh.aclose()
        await store.close()


# --- key quotas and usage through an outage --------------------------------------------------


async def test_key_quota_is_kept_locally_in_an_outage_and_its_rows_reach_redis_after(throwaway):
    from flux_proxy.store.base import KeyUsage, UsageRow

    clock = FrozenClock(START)
    store = ResilientStore(
        RedisStore(throwaway.url, "fp:", clock), MemoryStore(clock), clock=clock, retry_interval=1
    )
    await store.open()
    before = await store.try_reserve_key("alice", DAY, 1, 10.0, 3, None, ttl=300)
    await store.settle_key(before, [UsageRow(DAY, "alice", "1", "m", 1, 9.0, 1)], 90)

    throwaway.kill()
    # This replica's own mirror still counts the image made before the outage.
    held = await quick(store.try_reserve_key("alice", DAY, 2, 20.0, 3, None, ttl=300))
    assert held is not None
    assert await quick(store.try_reserve_key("alice", DAY, 1, 10.0, 3, None, ttl=300)) is None
    await quick(store.settle_key(held, [UsageRow(DAY, "alice", "2", "m", 2, 19.5, 1)], 90))

    throwaway.start()
    clock.advance(1)
    try:
        assert (await store.status())["ok"] is True  # back, and what was learned is pushed
        shared = RedisStore(throwaway.url, "fp:", clock)
        await shared.open()
        try:
            # The restarted Redis kept nothing (no persistence): only the pushed outage rows.
            rows = {r.account: r for r in await shared.usage_rows(DAY, DAY)}
            assert rows == {"2": UsageRow(DAY, "alice", "2", "m", 2, 19.5, 1)}
            assert await shared.key_usage("alice", DAY) == KeyUsage(2, 19.5, 0, 0.0)
        finally:
            await shared.close()
    finally:
        await store.close()
