"""SIGTERM (what Docker, systemd and Kubernetes send): the proxy stops accepting at once,
finishes what it has in flight within SHUTDOWN_GRACE_SECONDS, then stops, with real processes.
"""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from procs import Emulator, shared_emulator, start_proxy
from reliability import SMALL, wait_for

IN_FLIGHT = 6


@pytest.fixture
def slow_emulator() -> Emulator:
    emulator = shared_emulator()
    yield emulator
    emulator.reset()  # latency and faults back to normal for whoever comes next


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _post(proxy, prompt: str) -> httpx.Response | Exception:
    try:
        return proxy.generate(timeout=30, prompt=prompt, **SMALL)
    except httpx.HTTPError as error:
        return error


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits(tmp_path, slow_emulator):
    slow_emulator.config(latency=1.0)
    proxy = start_proxy(tmp_path, slow_emulator, SHUTDOWN_GRACE_SECONDS=10, STATE_BACKEND="memory")
    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            futures = [pool.submit(_post, proxy, f"in flight {i}") for i in range(IN_FLIGHT)]
            assert wait_for(lambda: len(slow_emulator.calls()) == IN_FLIGHT, 5)
            proxy.proc.process.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()

            assert wait_for(lambda: _refused(proxy.proc.port), 1.0), "still accepting"
            refused_at = time.monotonic()
            assert not any(f.done() for f in futures)  # refused while they were still running
            results = [f.result(timeout=15) for f in futures]

        for result in results:
            assert isinstance(result, httpx.Response), result
            assert result.status_code == 200, result.text
            assert result.json()["data"][0]["b64_json"]
        proxy.proc.process.wait(timeout=10)
        exited_after = time.monotonic() - stopped_at
        assert refused_at - stopped_at < 0.9
        assert exited_after < 1.0 + 3.0, exited_after  # the 1 s calls, plus a little
        # uvicorn re-raises the signal it caught once shutdown is done: "ended by SIGTERM".
        assert proxy.proc.process.returncode in (0, -signal.SIGTERM)
        events = [line.get("event") for line in proxy.log_lines()]
        assert "stopping" in events  # the lifespan ran its shutdown (store, client closed)
        assert len(slow_emulator.calls()) == IN_FLIGHT  # nothing was retried or added
    finally:
        proxy.proc.stop()


def test_sigterm_gives_up_on_requests_that_outlast_the_grace_period(tmp_path, slow_emulator):
    slow_emulator.fault(kind="timeout", latency=60.0)  # Workers AI never answers in time
    grace = 1.0
    proxy = start_proxy(
        tmp_path, slow_emulator, SHUTDOWN_GRACE_SECONDS=grace, STATE_BACKEND="memory"
    )
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(_post, proxy, f"stuck {i}") for i in range(2)]
            assert wait_for(lambda: len(slow_emulator.calls()) == 2, 5)
            proxy.proc.process.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            proxy.proc.process.wait(timeout=10)
            exited_after = time.monotonic() - stopped_at
            results = [f.result(timeout=10) for f in futures]
        assert grace <= exited_after < grace + 3.0, exited_after
        for result in results:  # an answer or a closed connection, never a hang
            if isinstance(result, httpx.Response):
                assert result.status_code >= 500, result.text
            else:
                assert isinstance(result, httpx.TransportError), result
    finally:
        proxy.proc.stop()
