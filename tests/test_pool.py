"""The account pool: which accounts are called, how often, and what the caller is told."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from pydantic import SecretStr

from flux_proxy.clock import FrozenClock, next_utc_midnight, utc_day
from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage, ImageJob
from flux_proxy.metrics import Metrics
from flux_proxy.models import find_model
from flux_proxy.pool import AccountPool, account_key
from flux_proxy.settings import AccountConfig, Settings
from flux_proxy.store.memory import MemoryStore
from flux_proxy.upstream.classify import Attempt, OutcomeKind

K = OutcomeKind
NOON = 1736942400.0  # 2025-01-15T12:00:00Z
MIDNIGHT = next_utc_midnight(NOON)

# flux-2-dev at 512x512, 10 steps: 1 tile x 37.5 x 10 = 375 neurons.
JOB = ImageJob(model=find_model("flux-2-dev"), prompt="a fox", width=512, height=512, steps=10)
ESTIMATE = JOB.estimated_neurons()


def account(number: int, token: str | None = None) -> AccountConfig:
    return AccountConfig(
        number=number,
        account_id=f"account-{number:02d}-0123456789abcdef",
        token=SecretStr(token or f"token-{number}-SECRET"),
    )


def ok(neurons: float | None = None) -> Attempt:
    image = GeneratedImage.from_b64("iVBORw0KGgo=", account=0, neurons=neurons)
    return Attempt(K.SUCCESS, 200, None, "ok", None, neurons, image, 0.01)


def fail(
    kind: OutcomeKind,
    status: int | None = 500,
    code: int | None = None,
    retry_after: float | None = None,
    message: str = "nope",
    maybe_billed: bool = False,
    param: str | None = None,
) -> Attempt:
    return Attempt(kind, status, code, message, retry_after, None, None, 0.01, maybe_billed, param)


Script = Attempt | Callable[[AccountConfig, ImageJob], object]


class FakeClient:
    """Records which account each call went to and answers from a per-account script.

    A script is a list of Attempts (or async callables) used in turn; the last one repeats.
    Accounts without a script succeed.
    """

    def __init__(self, scripts: dict[int, list[Script]] | None = None) -> None:
        self.scripts = scripts or {}
        self.calls: list[int] = []

    async def run(self, account: AccountConfig, job: ImageJob) -> Attempt:
        self.calls.append(account.number)
        script = self.scripts.get(account.number) or [ok()]
        step = script.pop(0) if len(script) > 1 else script[0]
        if callable(step):
            return await step(account, job)
        return step

    def count(self, number: int) -> int:
        return self.calls.count(number)


def make_pool(
    accounts: int | list[AccountConfig] = 1,
    scripts: dict[int, list[Script]] | None = None,
    *,
    clock: FrozenClock | None = None,
    store: MemoryStore | None = None,
    metrics: Metrics | None = None,
    **settings,
) -> tuple[AccountPool, FakeClient, MemoryStore, FrozenClock]:
    if isinstance(accounts, int):
        accounts = [account(n) for n in range(1, accounts + 1)]
    clock = clock or FrozenClock(NOON)
    store = store or MemoryStore(clock)
    client = FakeClient(scripts)
    config = Settings(_env_file=None, accounts=accounts, **settings)
    return AccountPool(config, client, store, clock, metrics), client, store, clock


async def generate(pool: AccountPool, job: ImageJob = JOB) -> GeneratedImage:
    return await pool.generate(job, request_id="req-test")


async def expect_error(pool: AccountPool, job: ImageJob = JOB) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await generate(pool, job)
    return caught.value


async def usage(store: MemoryStore, acct: AccountConfig, clock: FrozenClock):
    return (await store.usage([account_key(acct)], utc_day(clock.now())))[account_key(acct)]


# --- success -------------------------------------------------------------------------------


async def test_success_returns_image_marked_with_account_and_settles_real_neurons():
    pool, client, store, clock = make_pool(2, {1: [ok(neurons=512.5)]})
    image = await generate(pool)
    assert client.calls == [1]
    assert image.account == 1
    spent = await usage(store, account(1), clock)
    assert (spent.used, spent.reserved) == (512.5, 0.0)


async def test_success_without_neurons_header_settles_the_estimate():
    pool, _, store, clock = make_pool(1)
    await generate(pool)
    assert (await usage(store, account(1), clock)).used == ESTIMATE


# --- quota -----------------------------------------------------------------------------------


async def test_exhausted_account_is_skipped_until_utc_midnight():
    pool, client, _store, clock = make_pool(
        3, {1: [fail(K.QUOTA_EXHAUSTED, 429, 4006), ok()]}, daily_neurons=10_000
    )
    first = await generate(pool)
    assert first.account == 2
    assert client.calls == [1, 2]

    for _ in range(3):
        assert (await generate(pool)).account == 2
    assert client.count(1) == 1  # never retried the same day

    entry = (await pool.snapshot())[0]
    assert entry["state"] == "parked"
    assert entry["code"] == 4006
    assert entry["neurons_remaining_today"] == 0
    assert entry["until"] == "2025-01-16T00:00:00Z"

    clock.set(MIDNIGHT + 1)
    assert (await generate(pool)).account == 1
    assert client.count(1) == 2


async def test_all_exhausted_gives_429_with_retry_after_until_midnight_and_no_retry():
    pool, client, _, _clock = make_pool(1, {1: [fail(K.QUOTA_EXHAUSTED, 429, 3036)]})
    error = await expect_error(pool)
    assert error.status == 429
    assert error.code == "accounts_exhausted"
    assert error.headers["Retry-After"] == str(int(MIDNIGHT - NOON))
    assert error.headers["x-should-retry"] == "false"
    # The next request costs no call at all.
    error = await expect_error(pool)
    assert error.status == 429
    assert client.calls == [1]


async def test_quota_makes_remaining_zero_even_with_budget_left():
    pool, _, store, clock = make_pool(1, {1: [fail(K.QUOTA_EXHAUSTED, 429, 4006)]})
    await expect_error(pool)
    left = await usage(store, account(1), clock)
    assert left.remaining(10_000) == 0
    assert left.reserved == 0


# --- cooling ----------------------------------------------------------------------------------


async def test_rate_limited_account_cools_for_retry_after_then_returns():
    pool, client, _, clock = make_pool(
        1, {1: [fail(K.RATE_LIMITED, 429, 971, retry_after=20), ok()]}
    )
    error = await expect_error(pool)
    assert error.status == 429
    assert error.headers["Retry-After"] == "20"
    assert "x-should-retry" not in error.headers  # short waits: let the SDK retry

    clock.advance(10)
    error = await expect_error(pool)
    assert error.headers["Retry-After"] == "10"
    assert client.calls == [1]

    clock.advance(10.5)
    assert (await generate(pool)).account == 1
    assert client.calls == [1, 1]


async def test_rate_limit_without_retry_after_uses_the_setting_and_fails_over():
    pool, client, _, _clock = make_pool(
        3, {1: [fail(K.RATE_LIMITED, 429)], 2: [fail(K.RATE_LIMITED, 429)]}, rate_limit_cooldown=45
    )
    assert (await generate(pool)).account == 3
    assert client.calls == [1, 2, 3]
    snapshot = await pool.snapshot()
    assert [e["state"] for e in snapshot] == ["cooling", "cooling", "available"]
    assert snapshot[0]["until"] == "2025-01-15T12:00:45Z"


async def test_capacity_cools_for_the_capacity_setting():
    pool, client, _, clock = make_pool(
        1, {1: [fail(K.CAPACITY, 429, 3040), ok()]}, capacity_cooldown=7
    )
    error = await expect_error(pool)
    assert error.headers["Retry-After"] == "7"
    clock.advance(7.01)
    await generate(pool)
    assert client.calls == [1, 1]


async def test_late_rate_limit_does_not_shorten_a_park_until_midnight():
    pool, client, _store, _clock = make_pool(1)
    gate = asyncio.Event()

    async def slow_rate_limit(acct, job):
        await gate.wait()
        return fail(K.RATE_LIMITED, 429, retry_after=5)

    client.scripts[1] = [slow_rate_limit]
    pending = asyncio.create_task(generate(pool))
    await asyncio.sleep(0)
    # Meanwhile another request learned that the account is out for the day.
    client.scripts[1] = [fail(K.QUOTA_EXHAUSTED, 429, 4006)]
    await expect_error(pool)
    client.scripts[1] = [slow_rate_limit]
    gate.set()
    with pytest.raises(ApiError):
        await pending
    assert (await pool.snapshot())[0]["state"] == "parked"


# --- auth and model --------------------------------------------------------------------------


async def test_disabled_account_stays_out_and_all_disabled_is_503():
    pool, client, _store, clock = make_pool(
        2, {1: [fail(K.AUTH, 401, 10000)], 2: [fail(K.AUTH, 403, 9109)]}
    )
    error = await expect_error(pool)
    assert (error.status, error.code) == (503, "no_usable_account")
    clock.advance(3 * 86400)
    error = await expect_error(pool)
    assert (error.status, error.code) == (503, "no_usable_account")
    assert client.calls == [1, 2]
    assert [e["state"] for e in await pool.snapshot()] == ["disabled", "disabled"]


async def test_a_new_token_clears_a_disabled_account():
    pool, _client, store, clock = make_pool(1, {1: [fail(K.AUTH, 401, 10000)]})
    await expect_error(pool)
    fixed, fresh_client, _, _ = make_pool(
        [account(1, token="a-new-token")], {}, store=store, clock=clock
    )
    assert (await generate(fixed)).account == 1
    assert fresh_client.calls == [1]


async def test_model_unavailable_skips_that_model_for_an_hour_only():
    schnell = ImageJob(model=find_model("flux-1-schnell"), prompt="x", steps=4)
    pool, client, _, clock = make_pool(2, {1: [fail(K.MODEL_UNAVAILABLE, 403, 5035), ok()]})
    assert (await generate(pool)).account == 2
    assert (await generate(pool)).account == 2
    assert client.count(1) == 1
    # The account itself is fine for other models.
    assert (await generate(pool, schnell)).account == 1
    first = (await pool.snapshot())[0]
    assert first["state"] == "available"
    (unavailable,) = first["models_unavailable"]  # why, for /health
    assert unavailable["model"] == "@cf/black-forest-labs/flux-2-dev"
    assert unavailable["reason"]
    clock.advance(3601)
    assert (await pool.snapshot())[0]["models_unavailable"] == []
    assert (await generate(pool)).account == 1


async def test_a_refused_request_form_is_not_retried_on_other_accounts():
    pool, client, _, _ = make_pool(3, {1: [fail(K.CONFIG_ERROR, 405, 5019)]})
    error = await expect_error(pool)
    assert (error.status, error.code) == (502, "upstream_configuration_error")
    assert client.count(2) == client.count(3) == 0


async def test_model_unavailable_everywhere_is_503():
    pool, _, _, _ = make_pool(1, {1: [fail(K.MODEL_UNAVAILABLE, 404, 3042)]})
    error = await expect_error(pool)
    assert (error.status, error.code) == (503, "model_unavailable")


async def test_model_unavailable_everywhere_says_why_now_and_while_it_is_remembered():
    # Before: only "not available on any configured account"; the reason (e.g. the terms not
    # accepted, 5016) was in /health, which a user key cannot see.
    terms = "The account has not accepted this model's terms; accept them (code 5016)"
    private = "This model is private to another account (code 5018)"
    scripts = {1: [fail(K.MODEL_UNAVAILABLE, 403, 5016, message=terms)]}
    scripts[2] = [fail(K.MODEL_UNAVAILABLE, 403, 5018, message=private)]
    pool, client, _, _ = make_pool(2, scripts)
    for _ in range(2):  # the first learns it from Cloudflare, the second from the pool's memory
        error = await expect_error(pool)
        assert (error.status, error.code) == (503, "model_unavailable")
        assert terms in error.message and private in error.message
    assert client.count(1) == client.count(2) == 1


# --- transient --------------------------------------------------------------------------------


async def test_transient_failure_tries_each_account_once_then_502():
    pool, client, _, _ = make_pool(3, {n: [fail(K.TRANSIENT, 502)] for n in (1, 2, 3)})
    error = await expect_error(pool)
    assert (error.status, error.code) == (502, "upstream_unavailable")
    assert client.calls == [1, 2, 3]


async def test_transient_failure_fails_over_to_next_account():
    pool, client, _, _ = make_pool(3, {1: [fail(K.TRANSIENT, None)]})
    assert (await generate(pool)).account == 2
    assert client.calls == [1, 2]


async def test_three_transient_failures_in_a_row_cool_an_account_for_30_seconds():
    pool, client, _, clock = make_pool(1, {1: [fail(K.TRANSIENT, 500)]})
    for _ in range(3):
        assert (await expect_error(pool)).status == 502
    error = await expect_error(pool)
    assert error.status == 429
    assert error.headers["Retry-After"] == "30"
    assert client.calls == [1, 1, 1]
    clock.advance(31)
    await expect_error(pool)
    assert client.calls == [1, 1, 1, 1]


async def test_success_resets_the_transient_streak():
    pool, _client, _, _ = make_pool(
        1, {1: [fail(K.TRANSIENT), fail(K.TRANSIENT), ok(), fail(K.TRANSIENT), fail(K.TRANSIENT)]}
    )
    for expected in (502, 502, None, 502, 502):
        if expected is None:
            await generate(pool)
        else:
            assert (await expect_error(pool)).status == expected
    assert (await pool.snapshot())[0]["state"] == "available"


async def test_timeout_after_sending_counts_as_spent(caplog):
    timed_out = fail(
        K.TRANSIENT, None, message="Workers AI did not answer in time", maybe_billed=True
    )
    pool, _client, store, clock = make_pool(2, {1: [timed_out]})
    with caplog.at_level(logging.INFO, logger="flux_proxy"):
        assert (await generate(pool)).account == 2
    spent = await usage(store, account(1), clock)
    assert (spent.used, spent.reserved) == (ESTIMATE, 0.0)
    first = next(r for r in caplog.records if getattr(r, "event", None) == "upstream_attempt")
    assert first.fields["maybe_billed"] is True


async def test_transient_without_sending_releases_the_reservation():
    pool, _, store, clock = make_pool(1, {1: [fail(K.TRANSIENT, None)]})
    await expect_error(pool)
    spent = await usage(store, account(1), clock)
    assert (spent.used, spent.reserved) == (0.0, 0.0)


# --- input errors -----------------------------------------------------------------------------


async def test_input_error_goes_straight_back_without_trying_other_accounts():
    rejected = fail(
        K.INPUT_ERROR,
        400,
        3030,
        message="Workers AI rejected the input (code 3030): Invalid input image[0]",
        param="image",
    )
    pool, client, store, clock = make_pool(3, {1: [rejected]})
    error = await expect_error(pool)
    assert error.status == 400
    assert error.code == "upstream_rejected_input"
    assert error.param == "image"
    assert "Invalid input image[0]" in error.message
    assert client.calls == [1]
    spent = await usage(store, account(1), clock)
    assert (spent.used, spent.reserved) == (0.0, 0.0)
    assert (await pool.snapshot())[0]["state"] == "available"


async def test_too_large_goes_straight_back_as_413():
    pool, client, _, _ = make_pool(3, {1: [fail(K.TOO_LARGE, 413, 3006)]})
    error = await expect_error(pool)
    assert (error.status, error.code) == (413, "upstream_rejected_input")
    assert client.calls == [1]


# --- budgets ----------------------------------------------------------------------------------


async def test_budget_too_small_skips_the_account_with_zero_calls():
    small = account(1).model_copy(update={"daily_neurons": ESTIMATE - 1})
    pool, client, _, _ = make_pool([small, account(2)])
    assert (await generate(pool)).account == 2
    assert client.calls == [2]


async def test_every_budget_left_too_small_is_429_until_midnight_with_no_calls():
    pool, client, store, clock = make_pool(2, daily_neurons=ESTIMATE + 10)
    for number in (1, 2):
        await store.record_spend(account_key(account(number)), utc_day(clock.now()), 20)
    error = await expect_error(pool)
    assert (error.status, error.code) == (429, "accounts_exhausted")
    assert error.headers["Retry-After"] == str(int(MIDNIGHT - NOON))
    assert client.calls == []


async def test_an_image_beyond_every_whole_daily_budget_is_a_400_with_no_calls():
    # Waiting for 00:00 UTC cannot help: tomorrow's budget is no bigger.
    pool, client, _, _ = make_pool(2, daily_neurons=ESTIMATE - 1)
    error = await expect_error(pool)
    assert (error.status, error.code, error.type) == (
        400,
        "exceeds_daily_budget",
        "invalid_request_error",
    )
    assert "Retry-After" not in error.headers
    assert client.calls == []


async def test_unlimited_budget_never_skips():
    pool, client, _, _ = make_pool(1, daily_neurons=0)
    for _ in range(40):  # 40 x 375 > 10,000
        await generate(pool)
    assert client.count(1) == 40
    assert (await pool.snapshot())[0]["neurons_remaining_today"] is None


async def test_concurrent_requests_never_overspend_a_tight_budget():
    async def slow_ok(acct, job):
        await asyncio.sleep(0.01)
        return ok(neurons=ESTIMATE)

    budget = ESTIMATE * 2.5  # room for two calls per account
    pool, client, store, clock = make_pool(
        2, {1: [slow_ok], 2: [slow_ok]}, daily_neurons=budget, account_concurrency=50
    )
    results = await asyncio.gather(*(generate(pool) for _ in range(20)), return_exceptions=True)
    images = [r for r in results if isinstance(r, GeneratedImage)]
    errors = [r for r in results if isinstance(r, ApiError)]
    assert len(images) == 4
    assert len(errors) == 16
    assert {e.status for e in errors} == {429}
    assert client.count(1) == client.count(2) == 2
    for n in (1, 2):
        assert (await usage(store, account(n), clock)).used <= budget


# --- strategies -------------------------------------------------------------------------------


async def test_ordered_strategy_always_starts_with_the_lowest_number():
    pool, client, _, _ = make_pool([account(3), account(1), account(2)], routing_strategy="ordered")
    for _ in range(3):
        await generate(pool)
    assert client.calls == [1, 1, 1]


async def test_round_robin_strategy_rotates_the_first_account():
    pool, client, _, _ = make_pool(3, routing_strategy="round_robin")
    for _ in range(4):
        await generate(pool)
    assert client.calls == [1, 2, 3, 1]


async def test_round_robin_still_fails_over_in_rotated_order():
    pool, client, _, _ = make_pool(
        3, {3: [fail(K.TRANSIENT)], 1: [ok(), fail(K.TRANSIENT)]}, routing_strategy="round_robin"
    )
    await generate(pool)  # starts at 1
    await generate(pool)  # starts at 2
    assert (await generate(pool)).account == 2  # starts at 3 (fails), then 1 (fails), then 2
    assert client.calls == [1, 2, 3, 1, 2]


async def test_most_remaining_strategy_prefers_the_fullest_budget():
    pool, _client, store, clock = make_pool(3, routing_strategy="most_remaining")
    day = utc_day(clock.now())
    await store.record_spend(account_key(account(1)), day, 5000)
    await store.record_spend(account_key(account(2)), day, 1000)
    await store.record_spend(account_key(account(3)), day, 3000)
    assert (await generate(pool)).account == 2


# --- concurrency slots, cancellation, deadline ------------------------------------------------


async def test_busy_account_sends_the_next_request_to_another_account():
    gate = asyncio.Event()

    async def held(acct, job):
        await gate.wait()
        return ok()

    pool, _client, _, _ = make_pool(2, {1: [held, ok()]}, account_concurrency=1)
    first = asyncio.create_task(generate(pool))
    await asyncio.sleep(0)
    assert (await generate(pool)).account == 2
    gate.set()
    assert (await first).account == 1


async def test_no_free_slot_within_the_wait_is_429_busy():
    gate = asyncio.Event()

    async def held(acct, job):
        await gate.wait()
        return ok()

    pool, client, _, _ = make_pool(1, {1: [held]}, account_concurrency=1, slot_wait_seconds=0.05)
    first = asyncio.create_task(generate(pool))
    await asyncio.sleep(0)
    error = await expect_error(pool)
    assert (error.status, error.code) == (429, "accounts_busy")
    assert int(error.headers["Retry-After"]) >= 1
    gate.set()
    await first
    assert client.calls == [1]


async def test_a_slot_freed_within_the_wait_is_used():
    async def quick(acct, job):
        await asyncio.sleep(0.02)
        return ok()

    pool, client, _, _ = make_pool(1, {1: [quick]}, account_concurrency=1, slot_wait_seconds=2)
    images = await asyncio.gather(generate(pool), generate(pool), generate(pool))
    assert [image.account for image in images] == [1, 1, 1]
    assert client.calls == [1, 1, 1]
    assert pool.slots.in_use(1) == 0


async def test_cancelled_request_frees_its_slot_and_counts_its_sent_call_at_the_estimate():
    """Cancelled after the call was sent (a shutdown giving it up): Workers AI bills it all
    the same, as it may a timed-out call, so the reservation becomes spend, not nothing."""
    started = asyncio.Event()

    async def forever(acct, job):
        started.set()
        await asyncio.Event().wait()

    pool, _client, store, clock = make_pool(1, {1: [forever]}, account_concurrency=1)
    task = asyncio.create_task(generate(pool))
    await started.wait()
    assert pool.slots.in_use(1) == 1
    assert (await usage(store, account(1), clock)).reserved == ESTIMATE
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.slots.in_use(1) == 0
    spent = await usage(store, account(1), clock)
    assert (spent.used, spent.reserved) == (ESTIMATE, 0.0)


async def test_failover_stops_at_the_request_deadline():
    pool, client, _, clock = make_pool(5, request_deadline=300)

    async def slow_failure(acct, job):
        clock.advance(200)
        return fail(K.TRANSIENT, 500)

    client.scripts = {n: [slow_failure] for n in range(1, 6)}
    error = await expect_error(pool)
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert client.calls == [1, 2]


async def test_a_call_running_past_the_deadline_is_abandoned_and_counted_as_spent():
    async def hangs(acct, job):
        await asyncio.sleep(5)
        return ok()

    pool, client, store, clock = make_pool(2, {1: [hangs]}, request_deadline=0.05)
    error = await expect_error(pool)
    assert error.status == 504
    assert client.calls == [1]
    spent = await usage(store, account(1), clock)
    assert (spent.used, spent.reserved) == (ESTIMATE, 0.0)
    assert pool.slots.in_use(1) == 0


# --- nothing usable -------------------------------------------------------------------------


async def test_no_accounts_configured_is_503():
    pool, client, _, _ = make_pool(0)
    error = await expect_error(pool)
    assert (error.status, error.code) == (503, "no_usable_account")
    assert client.calls == []


async def test_retry_after_is_the_earliest_return_among_accounts():
    pool, client, _, clock = make_pool(
        3,
        {
            1: [fail(K.QUOTA_EXHAUSTED, 429, 4006)],
            2: [fail(K.RATE_LIMITED, 429, retry_after=90)],
            3: [fail(K.CAPACITY, 429, 3040, retry_after=12)],
        },
    )
    error = await expect_error(pool)
    assert error.headers["Retry-After"] == "12"
    assert "x-should-retry" not in error.headers
    clock.advance(12)
    client.scripts[3] = [fail(K.QUOTA_EXHAUSTED, 429, 3036)]
    error = await expect_error(pool)
    assert error.headers["Retry-After"] == "78"
    assert error.headers["x-should-retry"] == "false"
    assert client.calls == [1, 2, 3, 3]


async def test_error_messages_never_carry_tokens_or_account_ids():
    pool, _, _, _ = make_pool(
        2, {1: [fail(K.AUTH, 401, 10000)], 2: [fail(K.QUOTA_EXHAUSTED, 429, 4006)]}
    )
    error = await expect_error(pool)
    text = str(error.body()) + str(error.headers)
    for acct in (account(1), account(2)):
        assert acct.token.get_secret_value() not in text
        assert acct.account_id not in text


# --- observation ----------------------------------------------------------------------------


async def test_each_attempt_is_logged_and_counted(caplog):
    metrics = Metrics()
    pool, _, _, _ = make_pool(2, {1: [fail(K.RATE_LIMITED, 429, 971)]}, metrics=metrics)
    with caplog.at_level(logging.INFO, logger="flux_proxy"):
        await generate(pool)
    lines = [r.fields for r in caplog.records if getattr(r, "event", None) == "upstream_attempt"]
    assert [(f["account"], f["outcome"], f["cf_code"]) for f in lines] == [
        (1, "rate_limited", 971),
        (2, "success", None),
    ]
    assert lines[0]["model"] == "flux-2-dev"
    assert (lines[0]["width"], lines[0]["height"], lines[0]["steps"]) == (512, 512, 10)
    assert lines[0]["request_id"] == "req-test"
    assert "latency_ms" in lines[0] and "neurons" in lines[0]
    sample = metrics.registry.get_sample_value
    assert (
        sample(
            "flux_proxy_upstream_calls_total",
            {"account": "1", "model": "flux-2-dev", "outcome": "rate_limited", "cf_code": "971"},
        )
        == 1
    )
    assert sample("flux_proxy_neurons_total", {"account": "2", "model": "flux-2-dev"}) == ESTIMATE
    assert sample("flux_proxy_account_state", {"account": "1", "state": "cooling"}) == 1
    await generate(pool)
    assert sample("flux_proxy_accounts_skipped_total", {"account": "1", "reason": "cooling"}) == 1


async def test_snapshot_shows_masked_ids_usage_and_next_reset():
    pool, _, _, _ = make_pool(2, {1: [fail(K.AUTH, 403, 9109)]}, daily_neurons=10_000)
    await generate(pool)
    first, second = await pool.snapshot()
    assert (first["state"], first["code"], first["until"]) == ("disabled", 9109, None)
    assert first["last_error_code"] == 9109
    assert not AccountPool.is_usable_now(first)
    assert second == {
        "number": 2,
        "account": account(2).masked_id,
        "state": "available",
        "until": None,
        "reason": None,
        "code": None,
        "neurons_used_today": ESTIMATE,
        "neurons_remaining_today": 10_000 - ESTIMATE,
        "daily_budget": 10_000,
        "in_flight": 0,
        "last_error_code": None,
        "next_reset": "2025-01-16T00:00:00Z",
        "models_unavailable": [],
    }
    assert AccountPool.is_usable_now(second)
    for entry in (first, second):
        assert "account-0" not in str(entry)
        assert "SECRET" not in str(entry)


def test_account_key_is_number_and_id_fingerprint():
    key = account_key(account(7))
    number, digest = key.split(":")
    assert number == "7" and len(digest) == 8
    assert account_key(account(7)) != account_key(
        account(7).model_copy(update={"account_id": "another-account-id-000"})
    )
