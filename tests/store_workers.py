"""Subprocess workers for the state-store tests: separate processes sharing one SQLite file or
one Redis prefix, as replicas do in production.

Run as a script:
    reserve BACKEND TARGET PREFIX ACCOUNT DAY AMOUNT BUDGET TRIES GO_FILE
        prints "ready", waits until GO_FILE exists (so all workers start together),
        fires TRIES concurrent try_reserve calls, prints {"granted": n} as JSON.
    persist PATH ACCOUNT DAY SPEND UNTIL
        parks ACCOUNT until UNTIL, records SPEND in SQLite, prints "committed", then waits to
        be killed.

Tests import the helpers below (pytest puts tests/ on sys.path); they block, so async tests
call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from flux_proxy.store.base import Block
from flux_proxy.store.redis import RedisStore
from flux_proxy.store.sqlite import SqliteStore


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_competing_workers(
    backend: str,
    target: str,
    prefix: str,
    account: str,
    day: str,
    go_file: Path,
    *,
    workers: int,
    tries: int,
    amount: float,
    budget: float,
) -> list[int]:
    """Start `workers` processes, release them at once, return what each was granted."""
    args = [backend, target, prefix, account, day, str(amount), str(budget), str(tries)]
    procs = [_spawn("reserve", *args, str(go_file)) for _ in range(workers)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go_file.touch()
        granted = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            granted.append(json.loads(out.strip().splitlines()[-1])["granted"])
        return granted
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def persist_then_get_killed(path: Path, account: str, day: str, spend: float, until: float) -> int:
    """Have a process commit a block and spend, SIGKILL it, return its exit status."""
    proc = _spawn("persist", str(path), account, day, str(spend), str(until))
    try:
        assert proc.stdout.readline().strip() == "committed", proc.stderr.read()
    finally:
        proc.kill()  # SIGKILL: no close(), no atexit, no flush
        proc.wait()
    return proc.returncode


async def _reserve(args: list[str]) -> None:
    backend, target, prefix, account, day, amount, budget, tries, go_file = args
    store = SqliteStore(Path(target)) if backend == "sqlite" else RedisStore(target, prefix)
    await store.open()
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(go_file):  # noqa: ASYNC240 - a polled flag, not real file I/O
        if time.monotonic() > deadline:
            raise SystemExit("never told to go")
        await asyncio.sleep(0.005)
    results = await asyncio.gather(
        *(
            store.try_reserve(account, day, float(amount), float(budget), ttl=600)
            for _ in range(int(tries))
        )
    )
    await store.close()
    print(json.dumps({"granted": sum(r is not None for r in results)}), flush=True)


async def _persist(args: list[str]) -> None:
    path, account, day, spend, until = args
    store = SqliteStore(Path(path))
    await store.open()
    block = Block(kind="parked", until=float(until), reason="daily allocation spent", code=3036)
    await store.set_block(account, block)
    await store.record_spend(account, day, float(spend))
    print("committed", flush=True)
    await asyncio.sleep(3600)  # the test kills us first


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    asyncio.run({"reserve": _reserve, "persist": _persist}[command](rest))
