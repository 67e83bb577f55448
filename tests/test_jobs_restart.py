"""Async jobs survive `kill -9` on SQLite (the default store), with real processes: the proxy,
its restart and the emulator. Jobs that were queued run after the restart; jobs whose call was
in flight at the kill are taken up again once their lease lapses, counted as maybe-billed."""

from __future__ import annotations

import base64
import io
import re
import time

import httpx
import pytest
from PIL import Image
from procs import Emulator, Proxy, shared_emulator, start_proxy

SMALL = {"model": "flux-2-klein-4b", "size": "256x256", "response_format": "b64_json"}
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def fresh() -> Emulator:
    return shared_emulator()


def job(proxy: Proxy, job_id: str) -> dict:
    response = httpx.get(f"{proxy.base_url}/images/jobs/{job_id}", headers=proxy.auth, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(condition, deadline: float, what: str):
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_kill_9_with_jobs_queued_and_in_flight_loses_none(tmp_path, fresh):
    env = {
        "STATE_BACKEND": "sqlite",
        "DATA_DIR": tmp_path / "data",
        "JOB_WORKERS": 2,
        "JOB_LEASE_SECONDS": 2,
    }
    fresh.config(latency=30)  # the first two calls are still running when the proxy dies
    proxy = start_proxy(tmp_path / "first", fresh, **env)
    prompts = [f"job number {n}" for n in range(5)]
    try:
        ids = []
        for prompt in prompts:
            response = proxy.generate(headers=ASYNC, prompt=prompt, **SMALL)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        wait_until(lambda: len(fresh.calls()) == 2, 20, "two calls in flight")
        statuses = [job(proxy, i)["status"] for i in ids]
        assert sorted(statuses) == ["in_progress"] * 2 + ["queued"] * 3
    finally:
        proxy.proc.kill9()  # no shutdown hook: only what was committed survives

    fresh.reset()  # latency back to none, a clean call log
    again = start_proxy(tmp_path / "second", fresh, **env)
    try:
        for job_id in ids:
            done = wait_until(
                lambda job_id=job_id: (
                    (j := job(again, job_id))["status"] != "queued"
                    and j["status"] != "in_progress"
                    and j
                ),
                60,
                f"job {job_id} to finish",
            )
            assert done["status"] == "completed", done
            data = base64.b64decode(done["result"]["data"][0]["b64_json"])
            assert Image.open(io.BytesIO(data)).size == (256, 256)
        # Each job was made once after the restart: the two that were in flight again, the
        # three that were queued for the first time.
        made = sorted(call["fields"]["prompt"] for call in fresh.calls())
        assert made == sorted(prompts)
        text = again.metrics()
        assert metric(text, "flux_proxy_jobs_total", event="resumed") == 2
        assert metric(text, "flux_proxy_jobs_total", event="completed") == 5
        maybe_billed = metric(
            text, "flux_proxy_duplicate_spend_total", account="unknown", model="flux-2-klein-4b"
        )
        assert maybe_billed == 2
    finally:
        again.proc.stop()


def test_a_replica_on_redis_takes_over_the_jobs_of_one_that_died(tmp_path, fresh, redis_prefix):
    from conftest import REDIS_URL

    env = {
        "STATE_BACKEND": "redis",
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "JOB_WORKERS": 1,
        "JOB_LEASE_SECONDS": 2,
    }
    fresh.config(latency=30)
    first = start_proxy(tmp_path / "a", fresh, **env)
    try:
        ids = [
            first.generate(headers=ASYNC, prompt=f"shared job {n}", **SMALL).json()["id"]
            for n in range(2)
        ]
        wait_until(lambda: len(fresh.calls()) == 1, 20, "one call in flight on replica A")
    finally:
        first.proc.kill9()

    fresh.reset()
    second = start_proxy(tmp_path / "b", fresh, **env)
    try:
        # Replica B reads A's jobs, and works the one A had started once A's lease lapsed.
        for job_id in ids:
            assert job(second, job_id)["id"] == job_id
        for job_id in ids:
            done = wait_until(
                lambda job_id=job_id: job(second, job_id)["status"] == "completed",
                60,
                f"job {job_id} to complete on replica B",
            )
            assert done
        assert sorted(c["fields"]["prompt"] for c in fresh.calls()) == [
            "shared job 0",
            "shared job 1",
        ]
        text = second.metrics()
        assert metric(text, "flux_proxy_jobs_total", event="resumed") == 1
    finally:
        second.proc.stop()


def test_sigterm_lets_a_running_job_finish_and_keeps_its_result(tmp_path, fresh):
    env = {"STATE_BACKEND": "sqlite", "DATA_DIR": tmp_path / "data", "JOB_WORKERS": 1}
    fresh.config(latency=2)
    proxy = start_proxy(tmp_path / "first", fresh, **env)
    try:
        job_id = proxy.generate(headers=ASYNC, prompt="finish me", **SMALL).json()["id"]
        wait_until(lambda: job(proxy, job_id)["status"] == "in_progress", 20, "the job to start")
    finally:
        proxy.proc.stop()  # SIGTERM: within SHUTDOWN_GRACE_SECONDS the job may finish
    again = start_proxy(tmp_path / "second", fresh, **env)
    try:
        done = job(again, job_id)
        assert done["status"] == "completed", done
        assert len(fresh.calls()) == 1  # finished before the stop, not made again
        assert metric(again.metrics(), "flux_proxy_jobs_total", event="resumed") == 0
    finally:
        again.proc.stop()


def test_a_job_cancelled_on_replica_b_while_a_waits_for_a_slot_is_never_sent(
    tmp_path, fresh, redis_prefix
):
    from concurrent.futures import ThreadPoolExecutor

    from conftest import REDIS_URL

    env = {
        "STATE_BACKEND": "redis",
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": redis_prefix,
        "JOB_WORKERS": 1,
        "ACCOUNT_CONCURRENCY": 1,
        "SLOT_WAIT_SECONDS": 30,
    }
    fresh.reset()
    fresh.config(latency=6)
    a = start_proxy(tmp_path / "a", fresh, **env)
    b = None
    try:
        with ThreadPoolExecutor(3) as callers:
            # Three synchronous requests take A's three accounts' only slots.
            busy = [callers.submit(a.generate, prompt=f"busy {n}", **SMALL) for n in range(3)]
            wait_until(lambda: len(fresh.calls()) == 3, 20, "every slot of replica A taken")
            job_id = a.generate(headers=ASYNC, prompt="never sent", **SMALL).json()["id"]
            # B starts after A's worker has taken the job (it waits for a slot there).
            b = start_proxy(tmp_path / "b", fresh, **env)
            assert job(a, job_id)["status"] == "queued"

            cancelled = httpx.delete(
                f"{b.base_url}/images/jobs/{job_id}", headers=b.auth, timeout=10
            )
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
            assert [f.result().status_code for f in busy] == [200] * 3
        time.sleep(1.0)  # A's slots are free: a worker still holding the job would send it
        assert job(a, job_id)["status"] == "cancelled"
        assert len(fresh.calls()) == 3
        text = a.metrics()
        assert metric(text, "flux_proxy_jobs_total", event="failed") == 0
        assert metric(text, "flux_proxy_jobs_total", event="completed") == 0
    finally:
        a.proc.stop()
        if b is not None:
            b.proc.stop()
        fresh.reset()


def test_sigterm_with_a_stuck_job_and_a_stuck_request_exits_within_one_grace(tmp_path, fresh):
    """Docker's `stop_grace_period` (35 s against the default 30 s grace) assumes one grace
    period. Job workers used to get a second one of their own after the requests' had run
    out, so a running job and a long request together took twice the grace and Docker's
    SIGKILL came first."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    grace = 3.0
    fresh.fault(kind="timeout", latency=60.0)  # every call hangs past the grace
    env = {
        "STATE_BACKEND": "sqlite",
        "DATA_DIR": tmp_path / "data",
        "JOB_WORKERS": 1,
        "SHUTDOWN_GRACE_SECONDS": grace,
    }
    proxy = start_proxy(tmp_path / "first", fresh, **env)
    try:
        proxy.generate(headers=ASYNC, prompt="stuck job", **SMALL)
        wait_until(lambda: len(fresh.calls()) == 1, 20, "the job's call")
        with ThreadPoolExecutor(1) as pool:
            live = pool.submit(
                lambda: _quietly(lambda: proxy.generate(timeout=30, prompt="stuck live", **SMALL))
            )
            wait_until(lambda: len(fresh.calls()) == 2, 20, "the live call")
            proxy.proc.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            proxy.proc.process.wait(timeout=20)
            exited_after = time.monotonic() - signalled
            live.result(timeout=10)
        assert exited_after < grace + 2.0, exited_after
    finally:
        proxy.proc.stop()


def _quietly(call):
    try:
        return call()
    except httpx.HTTPError as error:
        return error
