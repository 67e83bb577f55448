"""Budgets end to end, with a real `flux-proxy serve` process and a real emulator process:
an account whose budget cannot cover an image is skipped without a call, `unlimited` never
skips, parallel requests never spend past a budget, and the day rolls over at 00:00 UTC."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import openai
import pytest
from procs import Emulator, Proxy, shared_emulator, start_proxy

from flux_proxy.clock import FrozenClock, iso, next_utc_midnight

FLUX2_1024 = {"model": "flux-2-dev", "size": "1024x1024", "steps": 25}  # 3750 neurons
FLUX2_1024_NEURONS = 3750.0
FLUX2_512_NEURONS = 937.5  # 512x512, 25 steps


@pytest.fixture
def fresh() -> Emulator:
    """The run's emulator process, with faults, call log, usage and latency cleared."""
    return shared_emulator()


@pytest.fixture
def proxies(tmp_path):
    started: list[Proxy] = []

    def start(emulator: Emulator, **env) -> Proxy:
        env.setdefault("STATE_BACKEND", "sqlite")
        env.setdefault("DATA_DIR", tmp_path / f"data{len(started)}")
        proxy = start_proxy(tmp_path, emulator, **env)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.proc.stop()


def test_account_whose_budget_cannot_cover_the_image_is_skipped_without_a_call(fresh, proxies):
    proxy = proxies(fresh, CF_DAILY_NEURONS_1=3000)

    response = proxy.generate(**FLUX2_1024)

    assert response.status_code == 200, response.text
    assert fresh.calls(1) == []  # 3750 > 3000: not even tried
    assert [c["status"] for c in fresh.calls(2)] == [200]
    account_1, account_2 = proxy.account(1), proxy.account(2)
    assert account_1["state"] == "available"  # skipped for this job, not blocked
    assert account_1["neurons_used_today"] == 0
    assert account_1["neurons_remaining_today"] == 3000
    assert account_2["neurons_used_today"] == FLUX2_1024_NEURONS
    skipped = 'flux_proxy_accounts_skipped_total{account="1",reason="budget"} 1.0'
    assert skipped in proxy.metrics()

    # The skip is per estimate: an image that fits still goes to account 1 first.
    small = proxy.generate(model="flux-2-dev", size="512x512", steps=25)
    assert small.status_code == 200, small.text
    assert len(fresh.calls(1)) == 1
    assert proxy.account(1)["neurons_remaining_today"] == 3000 - FLUX2_512_NEURONS


def test_unlimited_budget_never_skips(fresh, proxies):
    fresh.set_usage(1, daily_neurons=0)  # a paid account: Cloudflare never says 3036
    proxy = proxies(fresh, CF_DAILY_NEURONS_1="unlimited")

    for _ in range(3):  # 11,250 neurons: past the free 10,000
        response = proxy.generate(**FLUX2_1024)
        assert response.status_code == 200, response.text

    assert len(fresh.calls(1)) == 3
    assert fresh.calls(2) == [] and fresh.calls(3) == []
    account_1 = proxy.account(1)
    assert account_1["daily_budget"] is None
    assert account_1["neurons_remaining_today"] is None
    assert account_1["neurons_used_today"] == 3 * FLUX2_1024_NEURONS


async def test_parallel_requests_never_spend_past_a_tight_budget(fresh, proxies):
    # One account with a budget for exactly three 3750-neuron images. Calls take a while, so
    # all requests are in flight at once and race for the budget.
    fresh.config(latency=0.4)
    proxy = await asyncio.to_thread(
        proxies,
        fresh,
        ACCOUNT_2="",
        CF_API_TOKEN_2="",
        ACCOUNT_3="",
        CF_API_TOKEN_3="",
        CF_DAILY_NEURONS_1=3 * FLUX2_1024_NEURONS,
        ACCOUNT_CONCURRENCY=32,
    )
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=_key(proxy), max_retries=0)

    async def one():
        try:
            return await client.images.generate(
                prompt="a red kite",
                model="flux-2-dev",
                size="1024x1024",
                extra_body={"steps": 25},
            )
        except openai.RateLimitError as error:
            return error

    try:
        results = await asyncio.gather(*(one() for _ in range(10)))
    finally:
        await client.close()

    images = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(images) == 3
    assert len(refused) == 7
    for error in refused:
        assert error.status_code == 429
        assert int(error.response.headers["retry-after"]) >= 1
        assert error.body["code"] == "accounts_exhausted"
    assert len(fresh.calls(1)) == 3  # refused requests never reached Cloudflare
    account_1 = await asyncio.to_thread(proxy.account, 1)
    assert account_1["neurons_used_today"] == 3 * FLUX2_1024_NEURONS
    assert account_1["neurons_remaining_today"] == 0


def _key(proxy: Proxy) -> str:
    return proxy.auth["Authorization"].removeprefix("Bearer ")


# --- 00:00 UTC, with an injected clock (in-thread proxy from conftest) -----------------


def test_account_parked_before_midnight_is_used_again_after_it(make_proxy, emulator):
    # conftest's in-thread proxy and emulator: the proxy's clock is a FrozenClock we move.
    evening = datetime(2026, 3, 14, 23, 59, 50, tzinfo=UTC).timestamp()
    midnight = next_utc_midnight(evening)
    clock = FrozenClock(evening)
    proxy = make_proxy(clock=clock)
    account_1_id = emulator.account_id(1)
    emulator.fault(account=account_1_id, status=429, code=3036, count=1)

    first = _post_image(proxy)
    assert first.status_code == 200, first.text
    assert [c["code"] for c in emulator.calls(account_1_id)] == [3036]
    parked = _health_account(proxy, 1)
    assert parked["state"] == "parked"
    assert parked["until"] == iso(midnight)
    assert parked["next_reset"] == iso(midnight)

    clock.advance(5)  # 23:59:55: still parked, no call
    assert _post_image(proxy).status_code == 200
    assert len(emulator.calls(account_1_id)) == 1

    clock.set(midnight + 1)  # 00:00:01 UTC: a new day
    third = _post_image(proxy)
    assert third.status_code == 200, third.text
    calls_1 = emulator.calls(account_1_id)
    assert [c["status"] for c in calls_1] == [429, 200]  # account 1 made this image
    again = _health_account(proxy, 1)
    assert again["state"] == "available"
    assert again["until"] is None
    assert 0 < again["neurons_used_today"] < 10_000  # the new day's spend only
    assert again["next_reset"] == iso(midnight + 86400)


def _post_image(proxy) -> httpx.Response:
    return httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "a fox", "size": "256x256"},
        headers=proxy.auth,
        timeout=30,
    )


def _health_account(proxy, number: int) -> dict:
    body = httpx.get(proxy.url + "/health", headers=proxy.auth, timeout=10).json()
    return next(a for a in body["accounts"] if a["number"] == number)


def test_an_image_no_account_budget_could_ever_cover_is_a_400_not_a_wait_for_midnight(
    fresh, proxies
):
    # Before: a fresh proxy answered 429 "every usable account is out of neurons ... usable
    # again at 00:00 UTC", which was false (tomorrow's budget is no bigger) and made the SDK
    # retry.
    proxy = proxies(fresh, DAILY_NEURONS=3000)

    response = proxy.generate(**FLUX2_1024)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "exceeds_daily_budget"
    assert error["type"] == "invalid_request_error"
    assert "3,750" in error["message"] and "3,000" in error["message"]
    assert "Retry-After" not in response.headers
    assert fresh.calls() == []
    assert proxy.account(1)["state"] == "available"
    # What fits still goes through.
    assert proxy.generate(model="flux-2-dev", size="512x512", steps=25).status_code == 200
