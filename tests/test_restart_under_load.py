"""`kill -9` in the middle of a load, on SQLite (the default store), with real processes: the
restarted proxy still knows account 1 is parked until midnight, keeps today's spend, and serves
at once, without a single call to the parked account.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from procs import Emulator, account_id, launch_proxy, ready, shared_emulator
from reliability import SMALL, wait_for

from flux_proxy.clock import iso, next_utc_midnight

WORKERS = 16
NEURONS_PER_CALL = 6.51  # flux-2-klein-4b at 256x256
ACCOUNT_1_CALLS = 40  # account 1's allocation lasts about this many calls


@pytest.fixture
def busy_emulator() -> Emulator:
    emulator = shared_emulator()
    emulator.config(rate_limit_per_minute=0)
    emulator.set_usage(1, daily_neurons=NEURONS_PER_CALL * ACCOUNT_1_CALLS)
    yield emulator
    emulator.config(rate_limit_per_minute=720)
    emulator.reset()


class Load:
    """`WORKERS` threads sending requests back to back until stopped; every outcome is kept
    with the moment it came back."""

    def __init__(self, proxy) -> None:
        self.proxy = proxy
        self.stop = threading.Event()
        self.results: list[tuple[float, int | str]] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(i,)) for i in range(WORKERS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads), "a request hung"

    def _work(self, worker: int) -> None:
        with httpx.Client(timeout=20) as client:
            sent = 0
            while not self.stop.is_set():
                sent += 1
                try:
                    response = client.post(
                        self.proxy.base_url + "/images/generations",
                        json={"prompt": f"worker {worker} request {sent}", **SMALL},
                        headers=self.proxy.auth,
                    )
                    outcome: int | str = response.status_code
                except httpx.TransportError as error:
                    outcome = type(error).__name__
                with self._lock:
                    self.results.append((time.monotonic(), outcome))

    def served(self) -> int:
        with self._lock:
            return sum(1 for _, outcome in self.results if outcome == 200)


def _accounts(proxy) -> dict[int, dict]:
    return {entry["number"]: entry for entry in proxy.health()["accounts"]}


def test_kill_9_under_load_keeps_parks_and_spend_and_the_restart_serves_at_once(
    tmp_path, busy_emulator
):
    emulator = busy_emulator
    env = {"STATE_BACKEND": "sqlite", "DATA_DIR": tmp_path / "data"}
    first = launch_proxy(tmp_path / "first", emulator, **env)
    try:
        ready(first)
        with Load(first) as load:
            assert wait_for(lambda: _accounts(first)[1]["state"] == "parked", 20)
            assert wait_for(lambda: load.served() >= 200, 20)
            before = _accounts(first)
            killed_at = time.monotonic()
            first.proc.kill9()  # mid-flight: WORKERS requests are on their way
    finally:
        first.proc.kill9()
    assert all(outcome == 200 for at, outcome in load.results if at < killed_at), [
        r for r in load.results if r[0] < killed_at and r[1] != 200
    ]
    assert any(at >= killed_at for at, _ in load.results)  # some really were in flight
    charged = {n: _charged(emulator, n) for n in (2, 3)}  # what Workers AI billed
    emulator.reset()  # a clean call log; account 1's allocation there is back too
    emulator.config(rate_limit_per_minute=0)

    launched = time.monotonic()
    second = launch_proxy(tmp_path / "second", emulator, **env)
    ready(second)
    response = second.generate(**SMALL)
    first_answer = time.monotonic() - launched
    assert response.status_code == 200, response.text
    assert first_answer < 10, first_answer  # start-up and the first image, no warm-up wait
    try:
        after = _accounts(second)
        midnight = iso(next_utc_midnight(time.time()))
        assert (after[1]["state"], after[1]["until"], after[1]["code"]) == (
            "parked",
            midnight,
            3036,
        )
        assert after[1]["neurons_remaining_today"] == 0
        for number in (2, 3):
            used = after[number]["neurons_used_today"]
            # Everything settled before the kill is kept; only calls cut off in flight (at
            # most one per worker) may be missing from what Workers AI counted. The other way,
            # a call whose connection broke may have been billed, and the pool counts such
            # calls as spent (duplicate spend, on the safe side of a budget): a few per worker
            # at most.
            slack = WORKERS * NEURONS_PER_CALL + 0.05
            assert before[number]["neurons_used_today"] <= used <= charged[number] + slack
            assert used >= charged[number] - slack
        assert used > 0

        with Load(second) as again:
            assert wait_for(lambda: again.served() >= 100, 20)
        assert {outcome for _, outcome in again.results} == {200}
        assert emulator.calls(1) == []  # the parked account was never asked again
    finally:
        second.proc.stop()


def _charged(emulator: Emulator, number: int) -> float:
    usage = httpx.get(emulator.root + "/__emulator/usage", timeout=10).json()["accounts"]
    return usage[account_id(number)]["neurons_used"]
