"""Replicas sharing one Redis, as real `flux-proxy serve` processes: what one learns, the other
knows before it calls; budgets hold across replicas; a Redis outage costs no requests.

Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0) with a fresh key prefix per
test, and, for the outage, a redis-server of its own on a free port.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis
from conftest import REDIS_URL
from procs import (
    Emulator,
    Proxy,
    launch_proxy,
    ready,
    redis_server_available,
    shared_emulator,
    start_proxy,
    start_redis,
)

from flux_proxy.clock import iso, next_utc_midnight

SMALL = {"model": "flux-2-klein-4b", "size": "256x256"}


@pytest.fixture
def fresh() -> Emulator:
    """The run's emulator process, with faults, call log, usage and latency cleared."""
    return shared_emulator()


@pytest.fixture
def replicas(tmp_path, fresh, redis_prefix):
    """`replicas(count, **env)`: that many proxy processes on one Redis prefix, started together."""
    url, prefix = REDIS_URL, redis_prefix
    started: list[Proxy] = []

    def start(count: int, **env) -> list[Proxy]:
        group = [
            launch_proxy(
                tmp_path / f"replica{i}",
                fresh,
                STATE_BACKEND="redis",
                REDIS_URL=url,
                REDIS_PREFIX=prefix,
                **env,
            )
            for i in range(count)
        ]
        started.extend(group)
        ready(*group)
        return group

    yield start
    for proxy in started:
        proxy.proc.stop()


def test_account_exhausted_through_one_replica_is_skipped_by_the_other_with_no_call(
    fresh, replicas
):
    a, b = replicas(2)
    fresh.set_usage(1, neurons=10_000)  # Cloudflare will answer 3036 for account 1

    first = a.generate(**SMALL)
    assert first.status_code == 200, first.text
    assert [(c["status"], c["code"]) for c in fresh.calls(1)] == [(429, 3036)]
    assert len(fresh.calls(2)) == 1

    # B never saw that 3036, yet knows account 1 is parked and does not call it.
    seen_by_b = b.account(1)
    assert seen_by_b["state"] == "parked"
    assert seen_by_b["code"] == 3036
    assert seen_by_b["until"] == iso(next_utc_midnight(time.time()))
    for _ in range(3):
        response = b.generate(**SMALL)
        assert response.status_code == 200, response.text
    assert len(fresh.calls(1)) == 1  # still only A's one call
    assert len(fresh.calls(2)) == 4
    # Spend is shared too: both replicas report account 2's whole day.
    spent = a.account(2)["neurons_used_today"]
    assert spent > 0
    assert b.account(2)["neurons_used_today"] == spent


async def test_parallel_requests_on_two_replicas_never_spend_past_a_shared_budget(fresh, replicas):
    # Only account 1, with a budget for exactly four images; eight requests on each replica
    # at once, with slow calls so they all overlap.
    image_neurons = 3750.0  # flux-2-dev, 1024x1024, 25 steps
    fresh.config(latency=0.4)
    a, b = await asyncio.to_thread(
        replicas,
        2,
        ACCOUNT_2="",
        CF_API_TOKEN_2="",
        ACCOUNT_3="",
        CF_API_TOKEN_3="",
        CF_DAILY_NEURONS_1=4 * image_neurons,
        ACCOUNT_CONCURRENCY=32,
    )
    body = {"prompt": "a kite", "model": "flux-2-dev", "size": "1024x1024", "steps": 25}
    async with httpx.AsyncClient(timeout=30, headers=a.auth) as client:
        responses = await asyncio.gather(
            *(
                client.post(proxy.base_url + "/images/generations", json=body)
                for proxy in (a, b) * 8
            )
        )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 4 + [429] * 12
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
    assert len(fresh.calls(1)) == 4
    used = await asyncio.to_thread(a.account, 1)
    assert used["neurons_used_today"] == 4 * image_neurons
    assert used["neurons_remaining_today"] == 0


@pytest.mark.skipif(not redis_server_available(), reason="redis-server is not installed")
def test_redis_outage_keeps_serving_from_local_state_and_recovers(tmp_path, fresh):
    server = start_redis(tmp_path / "redis")
    port = server.port
    proxy = start_proxy(
        tmp_path / "proxy",
        fresh,
        STATE_BACKEND="redis",
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        REDIS_PREFIX="outage:",
    )
    try:
        assert proxy.generate(**SMALL).status_code == 200
        assert proxy.health()["store"]["ok"] is True

        server.kill9()
        started = time.monotonic()
        responses = [proxy.generate(timeout=15, **SMALL) for _ in range(3)]
        took = time.monotonic() - started
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert took < 10, f"requests hung while Redis was away ({took:.1f} s)"
        health = proxy.health()
        assert health["store"]["backend"] == "redis"
        assert health["store"]["ok"] is False
        assert "local state" in health["store"]["detail"]
        assert health["status"] == "ok"  # accounts can still serve
        # What it spent during the outage is still counted locally.
        assert proxy.account(1)["neurons_used_today"] > 0
        events = [line["event"] for line in proxy.log_lines()]
        assert events.count("state_store_unreachable") == 1  # said once, not per call

        server = start_redis(tmp_path / "redis", port=port)
        deadline = time.monotonic() + 15  # the store retries every 5 s
        while not proxy.health()["store"]["ok"]:
            assert time.monotonic() < deadline, "the store did not come back"
            time.sleep(0.25)
        assert proxy.generate(**SMALL).status_code == 200
        assert "state_store_recovered" in [line["event"] for line in proxy.log_lines()]
        # The outage's spend was pushed to the new (empty) Redis: it is shared again.
        shared = redis.Redis(port=port)
        assert any(key.startswith(b"outage:usage:") for key in shared.keys("outage:*"))
        shared.close()
        assert proxy.proc.alive()
    finally:
        proxy.proc.stop()
        server.stop()


@pytest.mark.skipif(not redis_server_available(), reason="redis-server is not installed")
def test_ready_stays_ready_while_serving_from_local_state(tmp_path, fresh):
    server = start_redis(tmp_path / "redis")
    proxy = start_proxy(
        tmp_path / "proxy",
        fresh,
        STATE_BACKEND="redis",
        REDIS_URL=f"redis://127.0.0.1:{server.port}/0",
    )
    try:
        assert httpx.get(proxy.url + "/health/ready", timeout=10).status_code == 200
        server.kill9()
        assert proxy.generate(**SMALL).status_code == 200  # it does serve
        ready_answer = httpx.get(proxy.url + "/health/ready", timeout=10)
        assert ready_answer.status_code == 200, ready_answer.text
    finally:
        proxy.proc.stop()
        server.stop()
