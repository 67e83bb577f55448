"""Our own Python on the request path, in one process: CPU microseconds per request.

    python benchmarks/request_path.py     # unseeded, seeded repeat (a cache hit), seeded miss
    python benchmarks/request_path.py --requests 5000 --rounds 5

The Starlette app is called as an ASGI application with a pool that answers at once with a
small image, so there are no sockets, no uvicorn, no aiohttp and no emulator: what is left is
the middleware, routing, body reading, validation, the work layer (quota hold, fingerprint,
cache, repeats), the memory store and rendering. That is the part of the proxy's CPU that our
code decides; `run.py` measures the whole. Being one process with nothing to wait for, the
figure moves little with other load on the machine: run it at two commits (`git stash`, or a
worktree with `PYTHONPATH=`) to see what a change did. The best of several rounds is printed.

A stand-in pool is used here, for measuring only; the tests and `run.py` use the real one.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time

from flux_proxy.app import create_app
from flux_proxy.job import GeneratedImage
from flux_proxy.logs import configure_logging, logger
from flux_proxy.settings import Settings

KEY = "bench-key-not-a-secret-0123456789"
PNG_B64 = "iVBORw0KGgo" + "A" * 2000  # what the answer carries; its size hardly matters here


class InstantPool:
    """Answers every image at once: the request path without the upstream."""

    async def generate(self, job, *, request_id, progress=None, **_):
        return GeneratedImage.from_b64(PNG_B64, account=1, neurons=10.0, seed=job.seed)

    async def snapshot(self):
        return {}


async def _call(app, body: bytes) -> None:
    headers = [
        (b"host", b"127.0.0.1:8080"),
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    statuses = []
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # no disconnect

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/images/generations",
        "raw_path": b"/v1/images/generations",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    await app(scope, receive, send)
    if statuses != [200]:
        raise RuntimeError(f"the proxy answered {statuses}")


async def _started(app) -> tuple[asyncio.Queue, asyncio.Task]:
    inbox: asyncio.Queue = asyncio.Queue()
    ready = asyncio.Event()

    async def send(message):
        if message["type"] == "lifespan.startup.failed":
            raise RuntimeError(message.get("message"))
        if message["type"] == "lifespan.startup.complete":
            ready.set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
    )
    await ready.wait()
    return inbox, task


def _bodies(case: str):
    fields = {
        "model": "flux-2-dev",
        "prompt": "a lighthouse at dusk",
        "size": "512x512",
        "response_format": "b64_json",
    }
    if case == "unseeded":
        body = json.dumps(fields).encode()
        return itertools.repeat(body)
    if case == "seeded repeat":
        body = json.dumps({**fields, "seed": 7}).encode()
        return itertools.repeat(body)
    return (json.dumps({**fields, "seed": seed}).encode() for seed in itertools.count(1000))


async def measure(case: str, requests: int, rounds: int) -> float:
    settings = Settings(
        api_master_key=KEY,
        state_backend="memory",
        accounts=[],
        data_dir=tempfile.mkdtemp(prefix="flux-bench-"),
        log_level="INFO",
    )
    app = create_app(settings, pool=InstantPool())
    lifespan, running = await _started(app)
    bodies = _bodies(case)
    best = float("inf")
    for _ in range(rounds):
        prepared = [next(bodies) for _ in range(requests)]  # built before the clock starts
        started = time.process_time()
        for body in prepared:
            await _call(app, body)
        best = min(best, (time.process_time() - started) / requests * 1e6)
    await lifespan.put({"type": "lifespan.shutdown"})
    await running
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is printed")
    args = parser.parse_args(argv)
    # Log lines are formatted and written as `serve` writes them (INFO), to nowhere.
    configure_logging("text", "INFO")
    logger.handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds of {args.requests} requests")
    for case in ("unseeded", "seeded repeat", "seeded miss"):
        micros = asyncio.run(measure(case, args.requests, args.rounds))
        print(f"{case:14} {micros:7.1f} us CPU per request")


if __name__ == "__main__":
    main()
