"""A host that quits (or restarts the server) while `generate_image` is running, as the MCP
spec and the SDK's stdio client do it: stdin closed, SIGTERM 2 s later, SIGKILL 2 s after that;
or with SIGTERM alone, stdin left open (hosts that only kill the child).

The call was already sent to Workers AI, which bills it either way: a call that finishes in
that time is settled at its real neurons and kept (a seeded image in the seeded cache), and
one given up is still counted against the account's day at its estimate, so the next process
on the same DATA_DIR does not believe the account has neurons it no longer has.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import anyio
import pytest
from mcp_helpers import stdio_env, stdio_mcp, text_of
from procs import Emulator, shared_emulator
from reliability import wait_for

from flux_proxy.models import find_model

SMALL = {"model": "flux-2-klein-4b", "size": "512x512"}


@pytest.fixture
def slow_emulator() -> Emulator:
    emulator = shared_emulator()
    yield emulator
    emulator.reset()  # latency back to normal for whoever comes next


async def _quit_mid_call(workdir, env, emulator: Emulator, arguments: dict) -> None:
    """Start the call, and once Workers AI has it, cancel it and close the server."""
    async with stdio_mcp(workdir, env) as client, anyio.create_task_group() as calls:
        calls.start_soon(client.call_tool, "generate_image", arguments)
        assert await asyncio.to_thread(wait_for, emulator.calls, 20)
        calls.cancel_scope.cancel()


async def _account_1(workdir, env) -> dict:
    async with stdio_mcp(workdir, env) as client:
        status = await client.call_tool("account_status", {})
    return status.structured_content["accounts"][0]


async def test_a_call_given_up_when_the_host_quits_still_counts_against_the_account(
    tmp_path, slow_emulator
):
    slow_emulator.config(latency=8.0)  # outlasts the host's 4 s from stdin closed to SIGKILL
    env = stdio_env(slow_emulator.base_url, tmp_path)
    await _quit_mid_call(tmp_path / "first", env, slow_emulator, {"prompt": "a kite", **SMALL})
    assert len(slow_emulator.calls()) == 1
    assert "stopping" in (tmp_path / "first" / "stderr.log").read_text()  # SIGTERM: a clean exit
    slow_emulator.config(latency=0.0)
    account = await _account_1(tmp_path / "second", env)
    estimate = find_model("flux-2-klein-4b").estimate_neurons(512, 512, None)
    assert account["neurons_used_today"] == pytest.approx(estimate)


async def test_a_call_that_ends_after_the_host_closed_stdin_is_settled_and_kept(
    tmp_path, slow_emulator
):
    slow_emulator.config(latency=1.0)  # ends within the 2 s the host waits before SIGTERM
    env = stdio_env(slow_emulator.base_url, tmp_path)
    arguments = {"prompt": "a kite", "seed": 77, **SMALL}
    await _quit_mid_call(tmp_path / "first", env, slow_emulator, arguments)
    (call,) = slow_emulator.calls()
    slow_emulator.config(latency=0.0)
    async with stdio_mcp(tmp_path / "second", env) as client:
        again = await client.call_tool("generate_image", arguments)
        status = await client.call_tool("account_status", {})
    assert not again.is_error, text_of(again)
    assert "from the seeded cache, no neurons spent" in text_of(again)
    assert len(slow_emulator.calls()) == 1  # the image paid for was not paid again
    account = status.structured_content["accounts"][0]
    assert account["neurons_used_today"] == pytest.approx(call["neurons"])


def test_sigterm_with_stdin_still_open_exits_at_once_and_counts_the_sent_call(
    tmp_path, slow_emulator
):
    slow_emulator.config(latency=8.0)
    env = stdio_env(slow_emulator.base_url, tmp_path)
    call = {"prompt": "a kite", **SMALL}
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "generate_image", "arguments": call},
        },
    ]
    (tmp_path / "first").mkdir()
    with open(tmp_path / "first" / "stderr.log", "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "flux_proxy", "mcp"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=tmp_path / "first",
            text=True,
        )
        try:
            child.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
            child.stdin.flush()
            assert wait_for(slow_emulator.calls, 20)
            child.send_signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            assert child.wait(timeout=5) == 0  # not held by the stdin reader until SIGKILL
            assert time.monotonic() - stopped_at < 3
        finally:
            if child.poll() is None:
                child.kill()
            child.stdin.close()
    slow_emulator.config(latency=0.0)
    account = asyncio.run(_account_1(tmp_path / "second", env))
    estimate = find_model("flux-2-klein-4b").estimate_neurons(512, 512, None)
    assert account["neurons_used_today"] == pytest.approx(estimate)


def test_sigterm_with_stdin_open_still_removes_the_emulators_throwaway_data_dir(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = stdio_env(None, tmp_path, TMPDIR=scratch)
    del env["DATA_DIR"]  # --emulator without DATA_DIR: a temporary directory, removed at exit
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"},
        },
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "flux_proxy", "mcp", "--emulator"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
        text=True,
    )
    try:
        child.stdin.write(json.dumps(hello) + "\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline())["id"] == 1
        assert [p.name[:15] for p in scratch.iterdir()] == ["flux-proxy-mcp-"]
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=5) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.stdin.close()
        child.stdout.close()
    assert [p.name for p in scratch.iterdir() if p.name.startswith("flux-proxy-mcp-")] == []
