"""Batches survive their runners: `kill -9` of a lone proxy on SQLite, and of one of two
replicas sharing Redis, mid-batch. Real processes (`python -m flux_proxy serve`), the
emulator process over HTTP, the unchanged openai SDK. Every line completes, once in the
output; a line is called upstream again only if its call was in flight at the kill."""

from __future__ import annotations

import collections
import socket
import time

import openai
import procs
import pytest
from batch_helpers import generation_lines, jsonl, output_lines, wait_for, wait_until

LINES = 16
RUNNER = {
    "BATCH_POLL_SECONDS": 0.2,
    "BATCH_LINE_LEASE_SECONDS": 3,
    "ACCOUNT_CONCURRENCY": 2,  # one batch line per account at a time
    # A line taken over from a dead runner first waits out that runner's in-flight marker
    # (the work layer's REQUEST_DEADLINE + UPSTREAM_READ_TIMEOUT): keep it short here.
    "REQUEST_DEADLINE": 6,
    "UPSTREAM_READ_TIMEOUT": 3,
}


@pytest.fixture
def slow_emulator():
    emulator = procs.shared_emulator()
    emulator.config(latency=0.6)
    yield emulator
    emulator.config(latency=0)


def _client(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=procs.API_KEY, max_retries=2, timeout=30)


def _submit(client) -> str:
    uploaded = client.files.create(
        file=("in.jsonl", jsonl(generation_lines(LINES))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
    )
    return batch.id


def _calls_per_prompt(emulator) -> collections.Counter:
    return collections.Counter(call["fields"].get("prompt") for call in emulator.calls())


def _check_every_line_once(client, batch_id: str, emulator, in_flight_at_kill: int) -> None:
    done = wait_for(client, batch_id, ("completed", "failed", "expired"), timeout=90)
    assert done.status == "completed", done
    assert done.request_counts.completed == LINES
    out = output_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == sorted(f"line-{i}" for i in range(LINES))
    per_prompt = _calls_per_prompt(emulator)
    assert set(per_prompt) == {f"product shot number {i}" for i in range(LINES)}
    repeated = sum(count - 1 for count in per_prompt.values())
    # Only a call in flight at the kill may have been made twice (counted as maybe-billed).
    assert repeated <= in_flight_at_kill


def test_kill_9_mid_batch_on_sqlite_loses_nothing(tmp_path, slow_emulator):
    env = {"STATE_BACKEND": "sqlite", "DATA_DIR": tmp_path / "data", **RUNNER}
    proxy = procs.start_proxy(tmp_path / "one", slow_emulator, **env)
    try:
        with _client(proxy) as client:
            batch_id = _submit(client)
            wait_until(
                lambda: client.batches.retrieve(batch_id).request_counts.completed >= 3,
                what="three finished lines",
            )
            assert client.batches.retrieve(batch_id).request_counts.completed < LINES
        proxy.proc.kill9()
        made_before = len(slow_emulator.calls())
        finished_before = _finished_lines(proxy)
        in_flight = made_before - len(finished_before)
        proxy = procs.start_proxy(tmp_path / "two", slow_emulator, **env)
        with _client(proxy) as client:
            _check_every_line_once(client, batch_id, slow_emulator, in_flight)
        # Lines finished before the kill were never called again.
        per_prompt = _calls_per_prompt(slow_emulator)
        assert all(per_prompt[f"product shot number {i}"] == 1 for i in finished_before)
    finally:
        proxy.proc.stop()


def test_two_replicas_on_redis_one_killed_mid_batch_finish_every_line_once(
    tmp_path, slow_emulator, redis_prefix
):
    env = {
        "REDIS_URL": procs_redis_url(),
        "REDIS_PREFIX": redis_prefix,
        "DATA_DIR": tmp_path / "shared-data",  # replicas share the blob directory
        **RUNNER,
    }
    first = procs.start_proxy(tmp_path / "a", slow_emulator, **env)
    second = procs.start_proxy(tmp_path / "b", slow_emulator, **env)
    try:
        with _client(first) as client:
            batch_id = _submit(client)
            wait_until(
                lambda: client.batches.retrieve(batch_id).request_counts.completed >= 3,
                what="three finished lines",
            )
        wait_until(  # both replicas are working on the one batch
            lambda: _finished_lines(first) and _finished_lines(second),
            what="lines finished on each replica",
        )
        with _client(second) as client:
            assert client.batches.retrieve(batch_id).request_counts.completed < LINES
        first.proc.kill9()
        in_flight = (
            len(slow_emulator.calls()) - len(_finished_lines(first)) - len(_finished_lines(second))
        )
        with _client(second) as client:
            _check_every_line_once(client, batch_id, slow_emulator, max(0, in_flight) + 2)
    finally:
        first.proc.stop()
        second.proc.stop()


def procs_redis_url() -> str:
    from conftest import REDIS_URL

    return REDIS_URL


def _finished_lines(proxy) -> list[int]:
    """Line indexes this process recorded (its `batch_line` log events)."""
    return [
        line["line"]
        for line in proxy.log_lines()
        if line.get("event") == "batch_line" and line.get("recorded")
    ]


def _persistent_redis(workdir, port=None) -> procs.Proc:
    """A redis-server that keeps its data across a restart (append-only, as compose runs it)."""
    port = port or procs.free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(workdir)]
    proc = procs.spawn("redis", argv, procs.clean_env(), workdir, port)
    deadline = time.monotonic() + 10
    while not _pong(port):
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start:\n{proc.output()[-2000:]}")
        time.sleep(0.05)
    return proc


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.mark.skipif(not procs.redis_server_available(), reason="needs redis-server")
def test_lines_finished_while_redis_is_away_are_recorded_when_it_returns(tmp_path):
    """Lines whose images were made while Redis was down used to be dropped unrecorded and
    sat in the batch's pending list until BATCH_LINE_LEASE_SECONDS (10 min by default), then
    were made and paid again. Now the runner keeps each finished line and records it once
    Redis answers again."""
    emulator = procs.shared_emulator()
    emulator.config(latency=2.0)
    redis_dir = tmp_path / "redis"
    redis = _persistent_redis(redis_dir)
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        "DATA_DIR": tmp_path / "data",
        **RUNNER,
        "BATCH_LINE_LEASE_SECONDS": 300,  # no takeover within the test: recording must do
    }
    proxy = procs.start_proxy(tmp_path / "proxy", emulator, **env)
    try:
        with _client(proxy) as client:
            uploaded = client.files.create(
                file=("in.jsonl", jsonl(generation_lines(3))), purpose="batch"
            )
            batch = client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/images/generations",
                completion_window="24h",
            )
            wait_until(lambda: len(emulator.calls()) == 3, what="three lines in flight")
            redis.kill9()  # the calls finish while Redis is away
            time.sleep(3.5)
            redis = _persistent_redis(redis_dir, redis.port)
            done = wait_for(client, batch.id, ("completed", "failed", "expired"), timeout=40)
            assert done.status == "completed", done
            assert done.request_counts.completed == 3
        assert len(emulator.calls()) == 3  # each image made and paid once
    finally:
        proxy.proc.stop()
        redis.stop()
        emulator.config(latency=0)
