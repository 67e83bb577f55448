"""What a proxy learns survives `kill -9` on SQLite (the default store), and `flux-proxy check`
reads it, with real processes: the proxy, its restart, the emulator, the check command."""

from __future__ import annotations

import time

import pytest
from procs import Emulator, account_env, account_id, run_check, shared_emulator, start_proxy

from flux_proxy.clock import iso, next_utc_midnight

SMALL = {"model": "flux-2-klein-4b", "size": "256x256"}


@pytest.fixture
def fresh() -> Emulator:
    """The run's emulator process, with faults, call log, usage and latency cleared."""
    return shared_emulator()


def test_parked_account_and_spend_survive_kill_9(tmp_path, fresh):
    data_dir = tmp_path / "data"
    env = {"STATE_BACKEND": "sqlite", "DATA_DIR": data_dir}
    fresh.fault(account=account_id(1), status=429, code=3036, count=1)
    proxy = start_proxy(tmp_path / "first", fresh, **env)
    try:
        assert proxy.generate(**SMALL).status_code == 200
        assert proxy.generate(**SMALL).status_code == 200
        before = {entry["number"]: entry for entry in proxy.health()["accounts"]}
    finally:
        proxy.proc.kill9()  # no shutdown hook, no flush: only what was committed survives
    midnight = iso(next_utc_midnight(time.time()))
    assert before[1]["state"] == "parked"
    assert before[1]["until"] == midnight
    assert before[2]["neurons_used_today"] > 0
    assert [c["code"] for c in fresh.calls(1)] == [3036]

    fresh.reset()  # a clean call log; the emulator itself would now serve account 1 again
    again = start_proxy(tmp_path / "second", fresh, **env)
    try:
        after = {entry["number"]: entry for entry in again.health()["accounts"]}
        assert after[1]["state"] == "parked"
        assert after[1]["until"] == midnight
        assert after[1]["code"] == 3036
        assert after[1]["neurons_remaining_today"] == 0
        assert after[2]["neurons_used_today"] == before[2]["neurons_used_today"]
        assert after[2]["neurons_remaining_today"] == before[2]["neurons_remaining_today"]

        response = again.generate(**SMALL)
        assert response.status_code == 200, response.text
        assert fresh.calls(1) == []  # the first request after the restart skipped it
        assert len(fresh.calls(2)) == 1
    finally:
        again.proc.stop()


def test_check_reports_a_bad_token_and_what_a_killed_proxy_learned(tmp_path, fresh):
    data_dir = tmp_path / "data"
    fresh.fault(account=account_id(1), status=429, code=3036, count=1)
    proxy = start_proxy(tmp_path / "proxy", fresh, STATE_BACKEND="sqlite", DATA_DIR=data_dir)
    try:
        assert proxy.generate(**SMALL).status_code == 200
    finally:
        proxy.proc.kill9()
    runs_before = len(fresh.calls())

    bad = "not-the-right-token-3f9e2a7c"
    env = {
        "CF_API_BASE_URL": fresh.base_url,
        "STATE_BACKEND": "sqlite",
        "DATA_DIR": data_dir,
        **account_env(CF_API_TOKEN_3=bad),
    }
    result = run_check(tmp_path / "check", env)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output  # account 2 can serve
    assert _row(output, 1)[2:4] == ["ok", "parked"]
    assert _row(output, 2)[2:4] == ["ok", "available"]
    assert _row(output, 3)[2] == "invalid"
    assert iso(next_utc_midnight(time.time())) in " ".join(_row(output, 1))
    assert len(fresh.calls()) == runs_before  # verifying tokens costs no model run
    assert fresh.log()["token_checks"] >= 3
    for secret in (bad, *(env[f"CF_API_TOKEN_{n}"] for n in (1, 2))):
        assert secret not in output

    # Only the parked account and the bad token left: nobody can serve, exit 1.
    only = {k: v for k, v in env.items() if not k.endswith("_2")}
    result = run_check(tmp_path / "check", only)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 of 2" in result.stdout


def _row(output: str, number: int) -> list[str]:
    for line in output.splitlines():
        cells = line.split()
        if cells and cells[0] == str(number):
            return cells
    raise AssertionError(f"no line for account {number} in:\n{output}")
