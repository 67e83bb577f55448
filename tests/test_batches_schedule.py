"""How batch lines are scheduled over budgets and days, with an injected clock (the in-thread
proxy's FrozenClock): a budget of 3 images a day drains a batch of 8 over three UTC days,
never calling when the budget cannot cover a line; cancel and expiry end a batch part-way
with the finished lines kept."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import httpx
import openai
import pytest
from batch_helpers import generation_lines, jsonl, output_lines, wait_for, wait_until

from flux_proxy.clock import FrozenClock, next_utc_midnight
from flux_proxy.models import find_model

# The model table's price of one line (flux-1-schnell at its default size and steps).
PRICE = find_model("flux-1-schnell").estimate_neurons(None, None, None)
FAST = {"batch_poll_seconds": 0.1, "batch_budget_reserve": 0}


def _day(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def _one_account(emulator, make_proxy, tmp_path, clock, **settings):
    return make_proxy(
        clock=clock,
        data_dir=tmp_path / "data",
        accounts=emulator.account_configs()[:1],
        **{**FAST, **settings},
    )


def _client(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=30)


def _submit(client, count: int, window: str = "72h", **body):
    uploaded = client.files.create(
        file=("in.jsonl", jsonl(generation_lines(count, **body))), purpose="batch"
    )
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window=window
    )


def _settles(emulator, count: int, seconds: float = 1.0) -> None:
    """The emulator has seen `count` calls and sees no more for a while (several polls)."""
    wait_until(lambda: len(emulator.calls()) >= count, what=f"{count} upstream calls")
    time.sleep(seconds)
    assert len(emulator.calls()) == count


def test_a_budget_of_three_a_day_drains_eight_lines_over_three_days(emulator, make_proxy, tmp_path):
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, daily_neurons=3 * PRICE + 1)
    bodies = [line["body"] for line in generation_lines(8)]
    estimate = httpx.post(
        proxy.base_url + "/batches/estimate",
        json={"endpoint": "/v1/images/generations", "bodies": bodies},
        headers=proxy.auth,
        timeout=10,
    ).json()
    assert estimate["estimated_days"] == 3 and estimate["lines"] == 8
    with _client(proxy) as client:
        batch = _submit(client, 8)
        assert batch.model_extra["estimated_neurons"] == pytest.approx(8 * PRICE)
        assert batch.model_extra["estimated_completion_at"] == estimate["estimated_completion_at"]
        # 3 today, 3 tomorrow, 2 the day after.
        expected_day = datetime.fromtimestamp(batch.model_extra["estimated_completion_at"], UTC)
        assert expected_day.date().isoformat() == "2026-03-12"

        _settles(emulator, 3)
        day_one = client.batches.retrieve(batch.id)
        assert day_one.status == "in_progress" and day_one.request_counts.completed == 3

        clock.set(next_utc_midnight(clock.now()) + 60)  # 00:01 UTC, day two
        _settles(emulator, 6)
        day_two = client.batches.retrieve(batch.id)
        assert day_two.status == "in_progress" and day_two.request_counts.completed == 6

        clock.set(next_utc_midnight(clock.now()) + 60)  # day three
        done = wait_for(client, batch.id, ("completed",))
        assert done.request_counts.completed == 8
        assert len(output_lines(client, done.output_file_id)) == 8
    calls = emulator.calls()
    assert len(calls) == 8 and all(call["status"] == 200 for call in calls)  # none refused


def test_batches_leave_the_reserve_for_live_requests(emulator, make_proxy, tmp_path):
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(
        emulator,
        make_proxy,
        tmp_path,
        clock,
        daily_neurons=4 * PRICE + 1,
        batch_budget_reserve=2 * PRICE,
    )
    with _client(proxy) as client:
        batch = _submit(client, 4)
        _settles(emulator, 2)  # 4 fit the budget, but 2 are kept for live requests
        assert client.batches.retrieve(batch.id).request_counts.completed == 2
        live = httpx.post(
            proxy.base_url + "/images/generations",
            json={"model": "flux-1-schnell", "prompt": "live", "response_format": "b64_json"},
            headers=proxy.auth,
            timeout=30,
        )
        assert live.status_code == 200
        assert client.batches.retrieve(batch.id).status == "in_progress"


def test_cancel_mid_batch_stops_new_lines_and_keeps_the_finished(emulator, make_proxy, tmp_path):
    clock = FrozenClock(time.time())
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, account_concurrency=2)
    httpx.post(emulator.root + "/__emulator/config", json={"latency": 0.4}, timeout=5)
    try:
        with _client(proxy) as client:
            batch = _submit(client, 8, window="24h")
            wait_until(
                lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2,
                what="two finished lines",
            )
            cancelling = client.batches.cancel(batch.id)
            assert cancelling.status in ("cancelling", "cancelled")
            done = wait_for(client, batch.id, ("cancelled",))
    finally:
        httpx.post(emulator.root + "/__emulator/config", json={"latency": 0}, timeout=5)
    counts = done.request_counts
    assert done.cancelled_at and done.cancelling_at
    assert 2 <= counts.completed < 8
    assert counts.completed + done.request_counts.model_extra["cancelled"] == 8
    assert len(emulator.calls()) == counts.completed  # nothing made was thrown away
    with _client(proxy) as client:
        kept = output_lines(client, done.output_file_id)
        closed = output_lines(client, done.error_file_id)
    assert len(kept) == counts.completed
    assert {line["error"]["code"] for line in closed} == {"batch_cancelled"}
    assert {line["custom_id"] for line in kept + closed} == {f"line-{i}" for i in range(8)}


def test_at_expiry_unfinished_lines_expire_and_finished_ones_stay(emulator, make_proxy, tmp_path):
    clock = FrozenClock(_day(2026, 3, 10, 0, 30))
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, daily_neurons=2 * PRICE + 1)
    with _client(proxy) as client:
        batch = _submit(client, 5, window="24h")
        _settles(emulator, 2)
        clock.advance(24 * 3600 + 60)  # the window ends (and a new budget day begins)
        done = wait_for(client, batch.id, ("expired",))
        assert done.expired_at and done.request_counts.completed == 2
        assert done.request_counts.model_extra["expired"] == 3
        assert len(output_lines(client, done.output_file_id)) == 2
        expired = output_lines(client, done.error_file_id)
    assert [line["error"]["code"] for line in expired] == ["batch_expired"] * 3
    assert all(line["response"] is None for line in expired)
    assert len(emulator.calls()) == 2


def test_two_batches_take_turns_on_a_tight_budget(emulator, make_proxy, tmp_path):
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(
        emulator, make_proxy, tmp_path, clock, daily_neurons=4 * PRICE + 1, account_concurrency=2
    )
    # Each call takes a while, so the first batch's first line is still running when the
    # second batch arrives, however slow the machine (else the first could finish all four).
    httpx.post(emulator.root + "/__emulator/config", json={"latency": 0.5}, timeout=5)
    try:
        with _client(proxy) as client:
            first = _submit(client, 4)
            second = _submit(client, 4)
            _settles(emulator, 4)
            done_first = client.batches.retrieve(first.id).request_counts.completed
            done_second = client.batches.retrieve(second.id).request_counts.completed
    finally:
        httpx.post(emulator.root + "/__emulator/config", json={"latency": 0}, timeout=5)
    # First come would be 4 and 0; taking turns shares the day's four images.
    assert done_first + done_second == 4
    assert done_second >= 1 and done_first <= 3


def test_a_line_the_upstream_rejects_fails_alone_and_busy_accounts_are_retried(
    emulator, make_proxy, tmp_path
):
    clock = FrozenClock(time.time())
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, account_concurrency=2)
    # The first call: Cloudflare refuses the input (400 5006); the next one: rate limited.
    emulator.fault(kind="error", status=400, code=5006, message="bad input", count=1)
    emulator.fault(kind="error", status=429, code=971, retry_after=30, count=1)
    with _client(proxy) as client:
        batch = _submit(client, 3)
        _settles(emulator, 2)  # the account cools down: the runner waits, no calls
        assert client.batches.retrieve(batch.id).status == "in_progress"
        clock.advance(31)  # the cool-down ends
        done = wait_for(client, batch.id, ("completed",))
        assert done.request_counts.completed == 2 and done.request_counts.failed == 1
        failed = output_lines(client, done.error_file_id)
    assert [line["error"]["code"] for line in failed] == ["upstream_rejected_input"]
    # 3 lines: one refused, one rate limited and then made, one made.
    assert [call["status"] for call in emulator.calls()].count(200) == 2
    assert len(emulator.calls()) == 4


def test_batch_lines_hold_at_most_their_share_of_an_accounts_slots(emulator, make_proxy, tmp_path):
    clock = FrozenClock(time.time())
    proxy = _one_account(
        emulator, make_proxy, tmp_path, clock, account_concurrency=4, batch_slot_share=0.5
    )
    httpx.post(emulator.root + "/__emulator/config", json={"latency": 0.5}, timeout=5)
    seen: list[int] = []
    try:
        with _client(proxy) as client:
            batch = _submit(client, 6, window="24h")
            while client.batches.retrieve(batch.id).status == "in_progress":
                health = httpx.get(proxy.url + "/health", headers=proxy.auth, timeout=5).json()
                seen.append(next(a for a in health["accounts"] if a["number"] == 1)["in_flight"])
                time.sleep(0.05)
            assert client.batches.retrieve(batch.id).status in ("finalizing", "completed")
    finally:
        httpx.post(emulator.root + "/__emulator/config", json={"latency": 0}, timeout=5)
    assert max(seen) == 2  # half of 4 slots; the other two stay free for live requests


def _released_lines(proxy) -> float:
    text = httpx.get(proxy.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('flux_proxy_batch_lines_total{outcome="released"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_key_past_its_daily_images_rests_its_batch_until_the_reset(
    emulator, make_proxy, tmp_path
):
    key = "fpx-shots-" + "q" * 30
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "shots"\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        'role = "user"\ndaily_images = 2\n'
    )
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, api_keys_file=keys)
    with openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=30) as client:
        batch = _submit(client, 5)
        _settles(emulator, 2, seconds=1.5)  # the pool has room; the key's quota has not
        day_one = client.batches.retrieve(batch.id)
        assert day_one.status == "in_progress" and day_one.request_counts.completed == 2
        # The refusal rests the batch until 00:00 UTC: a line or two handed back, not one per
        # look at the store (15 looks in 1.5 s at BATCH_POLL_SECONDS=0.1), nor a spin.
        assert _released_lines(proxy) <= 2

        clock.set(next_utc_midnight(clock.now()) + 60)
        _settles(emulator, 4)
        clock.set(next_utc_midnight(clock.now()) + 60)
        done = wait_for(client, batch.id, ("completed",))
    assert done.request_counts.completed == 5
    assert len(emulator.calls()) == 5


def test_lines_running_now_are_not_counted_twice_in_the_estimate(emulator, make_proxy, tmp_path):
    clock = FrozenClock(_day(2026, 3, 10, 9))
    # Room for exactly the batch's 4 lines today, 2 at a time (half of 4 slots).
    proxy = _one_account(
        emulator, make_proxy, tmp_path, clock, daily_neurons=4 * PRICE + 1, account_concurrency=4
    )
    emulator._post("config", {"latency": 3.0})
    try:
        with _client(proxy) as client:
            batch = _submit(client, 4)
            wait_until(
                lambda: (
                    httpx.get(proxy.url + "/health", headers=proxy.auth, timeout=10).json()[
                        "accounts"
                    ][0]["in_flight"]
                    == 2
                ),
                what="two lines in flight",
            )
            running = client.batches.retrieve(batch.id)
            assert running.request_counts.completed == 0
            # All four fit today: the two in flight hold neurons, but are still lines left.
            midnight = next_utc_midnight(clock.now())
            assert running.model_extra["estimated_completion_at"] < midnight, running
    finally:
        emulator._post("config", {"latency": 0.0})


def test_a_line_no_account_could_pay_for_in_a_day_fails_the_batch_up_front(
    emulator, make_proxy, tmp_path
):
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, daily_neurons=3 * PRICE + 1)
    lines = generation_lines(3)
    lines[1]["body"]["n"] = 4  # four images: more than the account's whole day
    with _client(proxy) as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="7d"
        )
        assert batch.status == "failed", batch
        assert [(e.line, e.code) for e in batch.errors.data] == [(2, "exceeds_daily_budget")]
        assert batch.request_counts.total == 0  # OpenAI counts no request in a failed batch
        lines[1]["body"]["n"] = 3  # a whole day's budget: it runs
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        fits = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="7d"
        )
        assert fits.status == "in_progress", fits.errors


def test_a_line_too_dear_for_today_lets_the_smaller_lines_behind_it_go_first(
    emulator, make_proxy, tmp_path
):
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, daily_neurons=3 * PRICE + 1)
    lines = generation_lines(4)
    lines[1]["body"]["n"] = 3  # a whole day's budget: after line 0 it waits for tomorrow
    with _client(proxy) as client:
        uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="72h"
        )
        # Day one: lines 0, 2 and 3 (one image each) fit; line 1 (three images) does not.
        _settles(emulator, 3)
        day_one = client.batches.retrieve(batch.id)
        assert day_one.status == "in_progress" and day_one.request_counts.completed == 3

        clock.set(next_utc_midnight(clock.now()) + 60)  # day two: room for line 1's three
        done = wait_for(client, batch.id, ("completed",))
        assert done.request_counts.completed == 4
        kept = output_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in kept) == [f"line-{i}" for i in range(4)]
    assert [
        len(line["response"]["body"]["data"]) for line in kept if line["custom_id"] == "line-1"
    ] == [3]
    calls = emulator.calls()
    assert len(calls) == 6 and all(call["status"] == 200 for call in calls)  # each image once


def test_a_batch_is_estimated_at_its_keys_daily_images_not_only_the_pools_budget(
    emulator, make_proxy, tmp_path
):
    key = "fpx-slow-" + "s" * 30
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "slow"\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        'role = "user"\ndaily_images = 2\n'
    )
    clock = FrozenClock(_day(2026, 3, 10, 9))
    proxy = _one_account(emulator, make_proxy, tmp_path, clock, api_keys_file=keys)
    auth = {"Authorization": f"Bearer {key}"}
    bodies = [line["body"] for line in generation_lines(5)]
    estimate = httpx.post(
        proxy.base_url + "/batches/estimate",
        json={"endpoint": "/v1/images/generations", "bodies": bodies},
        headers=auth,
        timeout=10,
    ).json()
    # The account could make all five today; the key allows 2 a day: 2, 2, then 1.
    assert estimate["estimated_days"] == 3, estimate
    finish = datetime.fromtimestamp(estimate["estimated_completion_at"], UTC)
    assert finish.date().isoformat() == "2026-03-12"
    with openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=30) as client:
        batch = _submit(client, 5)
        assert batch.model_extra["estimated_completion_at"] == estimate["estimated_completion_at"]
        _settles(emulator, 2, seconds=1.0)
        day_one = client.batches.retrieve(batch.id)  # 3 lines left, none of them today
        finish = datetime.fromtimestamp(day_one.model_extra["estimated_completion_at"], UTC)
        assert finish.date().isoformat() == "2026-03-12"
