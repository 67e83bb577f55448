"""Named keys across processes: the keys file reloaded on change and on SIGHUP without a
restart, per-key quotas and usage rows shared by two replicas on one Redis, and kept across a
restart on SQLite. Real `flux-proxy serve` processes, the emulator process, the openai SDK."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from procs import API_KEY, Proxy, shared_emulator, start_proxy
from reliability import SMALL, assert_openai_error
from test_keys import bearer, keys_toml, sha

from flux_proxy.clock import utc_day

ERIN = "fpx-erin-" + "e" * 31
FRANK = "fpx-frank-" + "f" * 30
GWEN = "fpx-gwen-plain-" + "g" * 25


def wait_for(condition, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status_with(proxy: Proxy, key: str) -> int:
    return httpx.get(proxy.base_url + "/models", headers=bearer(key), timeout=10).status_code


def generate(proxy: Proxy, key: str, **body) -> httpx.Response:
    return httpx.post(
        proxy.base_url + "/images/generations",
        headers=bearer(key),
        json={"prompt": "a kite", **SMALL, **body},
        timeout=30,
    )


def usage_rows(proxy: Proxy, group_by: str = "key,account,model,day") -> list[dict]:
    answer = httpx.get(
        proxy.base_url + "/usage",
        params={"group_by": group_by},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["data"]


def served_rows(answers: list[httpx.Response], key: str, model: str) -> list[dict]:
    """What the callers were given, in /v1/usage's shape, worked out from the answers alone."""
    rows: dict[int, dict] = {}
    day = utc_day(time.time())
    for answer in answers:
        body = answer.json()
        account = body["account_used"]
        row = rows.setdefault(
            account,
            {
                "key": key,
                "account": account,
                "model": model,
                "day": day,
                "images": 0,
                "neurons": 0.0,
                "requests": 0,
                "cache_hits": 0,
                "neurons_saved": 0.0,
            },
        )
        row["images"] += len(body["data"])
        row["neurons"] = round(row["neurons"] + body["usage"]["neurons"], 2)
        row["requests"] += 1
    return [rows[n] for n in sorted(rows)]


# --- reloading -----------------------------------------------------------------------------


def test_a_changed_keys_file_is_picked_up_without_a_restart_and_a_bad_one_is_ignored(tmp_path):
    emulator = shared_emulator()
    path = tmp_path / "keys.toml"
    path.write_text(keys_toml({"name": "erin", "key_sha256": sha(ERIN), "role": "user"}))
    proxy = start_proxy(tmp_path / "proxy", emulator, API_KEYS_FILE=path, KEYS_RELOAD_SECONDS=0.2)
    try:
        pid = proxy.proc.process.pid
        assert status_with(proxy, ERIN) == 200
        assert status_with(proxy, FRANK) == 401

        path.write_text(keys_toml({"name": "frank", "key_sha256": sha(FRANK), "role": "user"}))
        wait_for(lambda: status_with(proxy, FRANK) == 200, what="the new key to work")
        assert status_with(proxy, ERIN) == 401  # removed from the file: refused
        assert generate(proxy, FRANK).status_code == 200

        path.write_text('[[keys]]\nname = "frank"\nkey = \'unterminated\n')
        wait_for(lambda: "keys_reload_failed" in proxy.proc.output(), what="the failure log")
        assert status_with(proxy, FRANK) == 200  # the keys loaded before stay in use
        assert proxy.proc.alive() and proxy.proc.process.pid == pid
    finally:
        proxy.proc.stop()
    output = proxy.proc.output()
    for key in (ERIN, FRANK, sha(ERIN), sha(FRANK)):
        assert key not in output
    assert "unterminated" not in output


def test_sighup_reloads_the_keys_file(tmp_path):
    emulator = shared_emulator()
    path = tmp_path / "keys.toml"
    path.write_text(keys_toml({"name": "erin", "key_sha256": sha(ERIN), "role": "user"}))
    # The file is polled once an hour here, so only the signal can make the change count. No
    # API_MASTER_KEY either: the keys file alone is enough to serve.
    proxy = start_proxy(
        tmp_path / "proxy",
        emulator,
        API_KEYS_FILE=path,
        KEYS_RELOAD_SECONDS=3600,
        API_MASTER_KEY=None,
    )
    try:
        assert status_with(proxy, ERIN) == 200
        assert status_with(proxy, API_KEY) == 401  # no master key was configured
        path.write_text(keys_toml({"name": "gwen", "key": GWEN, "role": "admin"}))
        assert status_with(proxy, GWEN) == 401
        os.kill(proxy.proc.process.pid, signal.SIGHUP)
        wait_for(lambda: status_with(proxy, GWEN) == 200, what="the reload")
        assert status_with(proxy, ERIN) == 401
        assert proxy.proc.alive()
        health = httpx.get(proxy.url + "/health", headers=bearer(GWEN), timeout=10).json()
        assert "accounts" in health  # gwen is an admin
    finally:
        proxy.proc.stop()
    lines = proxy.log_lines()
    assert any(line.get("event") == "keys_reloaded" for line in lines)
    warning = next(line for line in lines if line.get("event") == "keys_file_plain_key")
    assert warning["key_name"] == "gwen"
    assert GWEN not in proxy.proc.output()


# --- shared and durable usage --------------------------------------------------------------


def test_quota_and_usage_rows_are_shared_by_two_replicas_on_one_redis(tmp_path, redis_prefix):
    from conftest import REDIS_URL

    emulator = shared_emulator()
    path = tmp_path / "keys.toml"
    path.write_text(
        keys_toml({"name": "erin", "key_sha256": sha(ERIN), "role": "user", "daily_images": 3})
    )
    env = {
        "API_KEYS_FILE": path,
        "STATE_BACKEND": "redis",
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
    }
    replicas = [start_proxy(tmp_path / f"proxy-{i}", emulator, **env) for i in (1, 2)]
    try:
        answers = [generate(replicas[i % 2], ERIN) for i in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        for replica in replicas:  # the quota is spent on both, whichever served
            refused = generate(replica, ERIN)
            assert refused.status_code == 429
            assert assert_openai_error(429, refused.json())["code"] == "key_quota_exceeded"
        assert len(emulator.calls()) == 3

        expected = served_rows(answers, "erin", SMALL["model"])
        for replica in replicas:
            rows = [r for r in usage_rows(replica) if r["key"] == "erin"]
            assert rows == expected
    finally:
        for replica in replicas:
            replica.proc.stop()


def test_usage_rows_and_quota_survive_a_restart_on_sqlite(tmp_path):
    emulator = shared_emulator()
    path = tmp_path / "keys.toml"
    path.write_text(
        keys_toml({"name": "frank", "key_sha256": sha(FRANK), "role": "user", "daily_images": 2})
    )
    env = {"API_KEYS_FILE": path, "STATE_BACKEND": "sqlite", "DATA_DIR": tmp_path / "data"}
    first = start_proxy(tmp_path / "proxy", emulator, **env)
    try:
        answers = [generate(first, FRANK) for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        before = usage_rows(first)
    finally:
        first.proc.kill9()  # not even a clean shutdown

    again = start_proxy(tmp_path / "proxy", emulator, **env)
    try:
        assert usage_rows(again) == before == served_rows(answers, "frank", SMALL["model"])
        refused = generate(again, FRANK)
        assert refused.status_code == 429, refused.text
        quota = httpx.get(again.base_url + "/usage/quota", headers=bearer(FRANK)).json()
        assert (quota["images_used"], quota["images_remaining"]) == (2, 0)
        assert len(emulator.calls()) == 2
    finally:
        again.proc.stop()


@pytest.fixture(autouse=True)
def _quiet_emulator():
    yield
    shared_emulator()  # leave it reset for whoever comes next
