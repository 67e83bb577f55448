"""`flux-proxy check` against the real emulator: token verdicts, learned state, exit codes."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from flux_proxy.check import main, run_check
from flux_proxy.clock import FrozenClock, iso, next_utc_midnight, utc_day
from flux_proxy.emulator import start_emulator
from flux_proxy.pool import account_key
from flux_proxy.settings import AccountConfig, Settings
from flux_proxy.store.base import Block
from flux_proxy.store.factory import open_store

# The emulator knows these two accounts; the tokens are long and distinctive so a leak into
# the output cannot hide.
GOOD = {
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9": "good-token-alpha-5f0c9d8e7b6a",
    "1f2e3d4c5b6a79880716253443526170": "good-token-bravo-3e1d2c4b5a69",
}
BAD_TOKEN = "bad-token-charlie-9a8b7c6d5e4f"
BAD_ACCOUNT_ID = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"

NOW = 1_796_000_000.0  # a fixed instant in 2026, mid-day UTC


@pytest.fixture
async def emulator():
    runner, base_url = await start_emulator("127.0.0.1", 0, dict(GOOD))
    try:
        yield base_url
    finally:
        await runner.cleanup()


def account(number: int, account_id: str, token: str) -> AccountConfig:
    return AccountConfig(number=number, account_id=account_id, token=SecretStr(token))


def good_accounts() -> list[AccountConfig]:
    return [account(n, aid, tok) for n, (aid, tok) in enumerate(GOOD.items(), start=1)]


def make_settings(base_url: str, accounts: list[AccountConfig], tmp_path: Path, **extra):
    values = {
        "cf_api_base_url": base_url,
        "accounts": accounts,
        "state_backend": "sqlite",
        "data_dir": tmp_path / "state",
        **extra,
    }
    return Settings(_env_file=None, **values)


async def check(settings: Settings, clock: FrozenClock | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = await run_check(settings, clock=clock or FrozenClock(NOW), out=out)
    return code, out.getvalue()


def row(output: str, number: int) -> str:
    """The table line for account `number`."""
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == str(number):
            return line
    raise AssertionError(f"no line for account {number} in:\n{output}")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def emulator_calls(base_url: str) -> dict:
    root = base_url.removesuffix("/client/v4")
    async with aiohttp.ClientSession() as session, session.get(f"{root}/__emulator/calls") as r:
        return await r.json()


async def test_bad_token_is_reported_invalid_while_good_accounts_serve(emulator, tmp_path):
    accounts = [*good_accounts(), account(3, BAD_ACCOUNT_ID, BAD_TOKEN)]
    code, output = await check(make_settings(emulator, accounts, tmp_path))

    assert code == 0
    for number in (1, 2):
        cells = row(output, number).split()
        assert cells[2] == "ok"
        assert cells[3] == "available"
        assert "10000 of 10000" in row(output, number)
    assert row(output, 3).split()[2] == "invalid"
    assert "2 of 3 accounts can serve now." in output


async def test_columns_line_up_across_accounts(emulator, tmp_path):
    accounts = [*good_accounts(), account(10, BAD_ACCOUNT_ID, BAD_TOKEN)]
    _, output = await check(make_settings(emulator, accounts, tmp_path))

    lines = [row(output, 1), row(output, 2), row(output, 10)]
    for word in ("ok", "invalid"):
        positions = {line.index(f" {word} ") for line in lines if f" {word} " in line}
        assert len(positions) == 1, output
    token_columns = {line.split()[1] for line in lines}
    assert all("…" in masked for masked in token_columns)


async def test_check_verifies_tokens_without_running_a_model(emulator, tmp_path):
    accounts = [*good_accounts(), account(3, BAD_ACCOUNT_ID, BAD_TOKEN)]
    await check(make_settings(emulator, accounts, tmp_path))

    seen = await emulator_calls(emulator)
    assert seen["calls"] == []  # no /ai/run call, so no neurons
    assert seen["token_checks"] == 3


async def test_every_token_bad_exits_one_and_names_the_variables(emulator, tmp_path):
    accounts = [
        account(1, BAD_ACCOUNT_ID, BAD_TOKEN),
        account(4, "2222222222222222aaaaaaaaaaaaaaaa", "another-bad-token-4d4d4d4d"),
    ]
    code, output = await check(make_settings(emulator, accounts, tmp_path))

    assert code == 1
    assert row(output, 1).split()[2] == "invalid"
    assert row(output, 4).split()[2] == "invalid"
    assert "0 of 2 accounts can serve now." in output
    assert "CF_API_TOKEN_1" in output and "CF_API_TOKEN_4" in output


async def test_no_accounts_exits_two_and_says_which_variables_to_set(tmp_path):
    code, output = await check(make_settings("http://127.0.0.1:9/client/v4", [], tmp_path))

    assert code == 2
    assert "CF_API_TOKEN_1" in output and "ACCOUNT_1" in output


async def test_output_never_contains_a_token_or_a_full_account_id(emulator, tmp_path, capsys):
    accounts = [*good_accounts(), account(3, BAD_ACCOUNT_ID, BAD_TOKEN)]
    _, output = await check(make_settings(emulator, accounts, tmp_path))
    captured = capsys.readouterr()

    everything = output + captured.out + captured.err
    for secret in [*GOOD.values(), BAD_TOKEN]:
        assert secret not in everything
    for account_id in [*GOOD, BAD_ACCOUNT_ID]:
        assert account_id not in everything


async def test_state_the_proxy_learned_is_shown(emulator, tmp_path):
    clock = FrozenClock(NOW)
    settings = make_settings(emulator, good_accounts(), tmp_path)
    first, second = settings.accounts
    # What a running proxy would have written: account 1 spent 2,500 neurons today, account 2
    # was told its daily allocation is gone.
    store = open_store(settings, clock)
    await store.open()
    await store.record_spend(account_key(first), utc_day(NOW), 2500)
    midnight = next_utc_midnight(NOW)
    await store.set_block(
        account_key(second), Block("parked", midnight, "daily allocation used up", 3036, NOW)
    )
    await store.close()

    code, output = await check(settings, clock)

    assert code == 0
    assert "7500 of 10000" in row(output, 1)
    assert f"parked until {iso(midnight)}" in row(output, 2)
    assert "1 of 2 accounts can serve now." in output


async def test_good_tokens_on_parked_accounts_exit_one(emulator, tmp_path):
    clock = FrozenClock(NOW)
    settings = make_settings(emulator, good_accounts(), tmp_path)
    store = open_store(settings, clock)
    await store.open()
    for configured in settings.accounts:
        await store.set_block(
            account_key(configured),
            Block("cooling", NOW + 60, "rate limited", 429, NOW),
        )
    await store.close()

    code, output = await check(settings, clock)

    assert code == 1
    assert row(output, 1).split()[2] == "ok"
    assert "cooling until" in row(output, 1)


async def test_account_whose_budget_is_spent_cannot_serve(emulator, tmp_path):
    clock = FrozenClock(NOW)
    settings = make_settings(emulator, good_accounts()[:1], tmp_path)
    store = open_store(settings, clock)
    await store.open()
    await store.record_spend(account_key(settings.accounts[0]), utc_day(NOW), 10_000)
    await store.close()

    code, output = await check(settings, clock)

    assert code == 1
    assert "0 of 10000" in row(output, 1)


async def test_unlimited_budget_is_shown_as_unlimited(emulator, tmp_path):
    settings = make_settings(emulator, good_accounts()[:1], tmp_path, daily_neurons=0)
    code, output = await check(settings)

    assert code == 0
    assert row(output, 1).split()[-1] == "unlimited"


async def test_unreachable_cloudflare_is_not_called_invalid(tmp_path):
    base_url = f"http://127.0.0.1:{closed_port()}/client/v4"
    code, output = await check(make_settings(base_url, good_accounts(), tmp_path))

    assert code == 1
    assert row(output, 1).split()[2] == "unreachable"
    assert "Could not get an answer" in output


async def test_unreachable_state_store_makes_state_unknown(emulator, tmp_path):
    redis_url = f"redis://127.0.0.1:{closed_port()}/0"
    settings = make_settings(
        emulator, good_accounts(), tmp_path, state_backend="redis", redis_url=redis_url
    )
    code, output = await check(settings)

    # A Redis outage would otherwise look like a fresh, all-available state.
    assert code == 1
    assert row(output, 1).split()[2] == "ok"
    assert row(output, 1).split()[3] == "unknown"
    assert "state store could not be read" in output
    # check serves nothing: the running proxy's "serving from local state" is not its news
    assert "serving from local state" not in output
    assert "state store: redis, unreachable" in output


async def test_redis_backend_without_url_is_a_configuration_error(tmp_path):
    settings = make_settings(
        "http://127.0.0.1:9/client/v4",
        good_accounts(),
        tmp_path,
        state_backend="redis",
        redis_url=None,  # explicit: CI exports REDIS_URL for the Redis tests
    )
    code, output = await check(settings)

    assert code == 2
    assert "REDIS_URL" in output


def test_main_reports_a_half_configured_account_as_exit_two(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no .env or .dev.vars from the repository
    for name in list(os.environ):
        if name.startswith(("CF_API_TOKEN_", "ACCOUNT_", "CF_DAILY_NEURONS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CF_API_TOKEN_1", "half-configured-token-77aa")

    assert main() == 2
    captured = capsys.readouterr()
    assert "ACCOUNT_1" in captured.err
    assert "half-configured-token-77aa" not in captured.out + captured.err


async def test_python_m_flux_proxy_check_runs_as_a_command(emulator, tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CF_", "ACCOUNT_", "STATE_", "REDIS_", "DATA_DIR"))
    }
    env.update(
        {
            "CF_API_BASE_URL": emulator,
            "STATE_BACKEND": "sqlite",
            "DATA_DIR": str(tmp_path / "state"),
            "ACCOUNT_1": BAD_ACCOUNT_ID,
            "CF_API_TOKEN_1": BAD_TOKEN,
        }
    )
    for number, (account_id, token) in enumerate(GOOD.items(), start=2):
        env[f"ACCOUNT_{number}"] = account_id
        env[f"CF_API_TOKEN_{number}"] = token
    # The emulator runs in this event loop, so the child must be awaited, not waited for.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flux_proxy",
        "check",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    output = stdout.decode() + stderr.decode()

    assert process.returncode == 0, output
    assert row(output, 1).split()[2] == "invalid"
    assert row(output, 2).split()[2] == "ok"
    for secret in [*GOOD.values(), BAD_TOKEN]:
        assert secret not in output
