"""Load: 2,000 requests at concurrency 64 over three accounts, while account 1 runs out of its
daily allocation part-way and account 2 answers 30% of its calls with "capacity exceeded".

Every request must come back (no loss, no hang: the whole run has one overall timeout) with an
image or an OpenAI-shaped error, never a 500; and every upstream call must be accounted for:
the emulator's call log, the proxy's metrics and the answers the callers got all agree, and
account 1 gets no call once it is parked except those already in flight.
"""

from __future__ import annotations

import asyncio
import base64
from collections import Counter

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reliability import HTTP, SMALL, assert_openai_error

from flux_proxy.clock import Clock

REQUESTS = 2000
CONCURRENCY = 64
ACCOUNT_SLOTS = 16  # per account: in-flight calls that can still reach a just-parked account
NEURONS_PER_CALL = 6.51  # flux-2-klein-4b at 256x256 (26.05 per 512x512 tile)
ACCOUNT_1_CALLS = 300  # account 1's allocation lasts about this many calls
OVERALL_TIMEOUT = 120.0

pytestmark = pytest.mark.slow


@pytest.fixture
def loaded_emulator(emulator):
    """Account 1 with a small allocation, 2 and 3 unlimited, 30% capacity errors on 2, and no
    per-minute rate limit (2,000 calls in seconds would trip Cloudflare's 720/min)."""
    root = emulator.root + "/__emulator"
    before = HTTP.get(root + "/config").json()
    HTTP.post(root + "/config", json={"rate_limit_per_minute": 0}).raise_for_status()
    allocations = {1: NEURONS_PER_CALL * ACCOUNT_1_CALLS, 2: 0, 3: 0}
    for number, neurons in allocations.items():
        body = {"account": emulator.account_id(number), "daily_neurons": neurons}
        HTTP.post(root + "/usage", json=body).raise_for_status()
    rule = {"account": emulator.account_id(2), "kind": "error", "status": 429, "code": 3040}
    HTTP.post(root + "/faults", json={**rule, "rate": 0.3}).raise_for_status()
    yield emulator
    limit = before["rate_limit_per_minute"]
    HTTP.post(root + "/config", json={"rate_limit_per_minute": limit}).raise_for_status()
    emulator.reset()


async def _run_load(url: str, auth: dict[str, str]) -> list[tuple[int, dict, dict]]:
    """(status, headers, body) for every request, in the order they were sent."""
    results: list[tuple[int, dict, dict] | None] = [None] * REQUESTS
    counter = iter(range(REQUESTS))
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for index in counter:
                body = {"prompt": f"load {index}", "seed": index % 7, **SMALL}
                async with session.post(
                    url + "/v1/images/generations",
                    json=body,
                    headers={**auth, "x-request-id": f"load-{index}"},
                ) as response:
                    results[index] = (
                        response.status,
                        dict(response.headers),
                        await response.json(),
                    )

        async with asyncio.timeout(OVERALL_TIMEOUT):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    assert all(result is not None for result in results), "a request was lost"
    return results  # type: ignore[return-value]


def _upstream_calls_by_account(metrics_text: str) -> Counter:
    calls: Counter = Counter()
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "flux_proxy_upstream_calls":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    calls[int(sample.labels["account"])] += int(sample.value)
    return calls


async def test_two_thousand_requests_through_an_exhaustion_and_capacity_errors(
    make_proxy, loaded_emulator
):
    emulator = loaded_emulator
    proxy = make_proxy(
        clock=Clock(),  # real time: account 2's short cool-downs end and it keeps being tried
        daily_neurons=0,  # no budget of our own: Cloudflare's 3036 is what parks account 1
        account_concurrency=ACCOUNT_SLOTS,
        capacity_cooldown=0.05,
        request_deadline=60,
    )

    results = await _run_load(proxy.url, proxy.auth)

    # Every caller got an image or a well-formed error; never a 500.
    statuses = Counter(status for status, _, _ in results)
    assert 500 not in statuses
    for status, headers, body in results:
        if status == 200:
            image = base64.b64decode(body["data"][0]["b64_json"])
            assert image.startswith(b"\x89PNG")
        else:
            error = assert_openai_error(status, body)
            assert status == 429 and "Retry-After" in headers, (status, error)
    # Account 3 never fails and has room: in this set-up every request is served.
    assert statuses == {200: REQUESTS}, statuses

    # The upstream calls, as Workers AI saw them.
    numbers = {emulator.account_id(n): n for n in (1, 2, 3)}
    calls = [(numbers[c["account"]], c["status"], c["code"]) for c in emulator.calls()]
    per_account = Counter(number for number, _, _ in calls)
    successes = Counter(number for number, status, _ in calls if status == 200)
    failures = Counter((number, code) for number, status, code in calls if status != 200)
    assert set(failures) <= {(1, 3036), (2, 3040)}, failures

    # Each image is exactly one successful call, on the account the answer names.
    assert sum(successes.values()) == REQUESTS
    answered_by = Counter(body["account_used"] for status, _, body in results if status == 200)
    assert answered_by == successes
    # Every call is a success or one of the injected failures: nothing else, nothing lost.
    assert len(calls) == REQUESTS + failures[(1, 3036)] + failures[(2, 3040)]
    # The proxy counted exactly the calls Workers AI received, per account.
    assert _upstream_calls_by_account(HTTP.get(proxy.url + "/metrics").text) == per_account

    # Account 1 served until its allocation ran out (give or take the calls Workers AI was
    # already working on), then was parked: the only calls refused with 3036 are the first and
    # those already in flight when the proxy learned it, at most one per other slot.
    assert ACCOUNT_1_CALLS <= successes[1] <= ACCOUNT_1_CALLS + ACCOUNT_SLOTS, successes
    assert 1 <= failures[(1, 3036)] <= ACCOUNT_SLOTS, failures
    last_success = max(i for i, (n, s, _) in enumerate(calls) if n == 1 and s == 200)
    first_refusal = next(i for i, (n, _, code) in enumerate(calls) if (n, code) == (1, 3036))
    later = [c for c in calls[max(first_refusal, last_success) + 1 :] if c[0] == 1]
    assert len(later) < ACCOUNT_SLOTS, later  # ...and then nothing, for the rest of the run
    assert len(calls) - first_refusal > REQUESTS // 2  # a long rest of the run

    # Account 2 failed about 30% of its calls and kept being used between cool-downs.
    rate = failures[(2, 3040)] / per_account[2]
    assert 0.2 < rate < 0.4, rate
    assert successes[2] > 100 and successes[3] > 100, successes

    # Afterwards: nothing in flight, account 1 parked, and the spend agrees with Workers AI.
    health = HTTP.get(proxy.url + "/health", headers=proxy.auth).json()
    usage = HTTP.get(emulator.root + "/__emulator/usage").json()["accounts"]
    for entry in health["accounts"]:
        number = entry["number"]
        assert entry["in_flight"] == 0
        assert entry["neurons_used_today"] == pytest.approx(
            usage[emulator.account_id(number)]["neurons_used"], abs=0.05
        )
    states = {entry["number"]: (entry["state"], entry["code"]) for entry in health["accounts"]}
    assert states[1] == ("parked", 3036)
