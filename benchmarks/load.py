"""The load generator: one aiohttp session, `concurrency` tasks in a closed loop.

Each task sends its next request as soon as its last answer has been read whole and checked,
so `concurrency` requests are always in flight. Every request body is built once, before the
clock starts: what is timed is the server side, not the load generator building bodies.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import orjson

from flux_proxy.job import ImageJob
from flux_proxy.upstream.client import build_body


@dataclass(frozen=True)
class Call:
    """One request, ready to send again and again."""

    url: str
    body: bytes
    headers: dict[str, str]
    check: Callable[[bytes], bool]  # does the answer carry an image?


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0
    concurrency: int = 1

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0

    def merge(self, other: Run) -> None:
        self.latencies += other.latencies
        self.failures += other.failures
        self.wall += other.wall


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 100 samples is the 99th smallest, not an average)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def new_session() -> aiohttp.ClientSession:
    # No connection limit and no timeout beyond a generous total: the load generator must
    # never be the thing that queues requests. Idle connections are dropped after 2 s, before
    # uvicorn's 5 s keep-alive closes them from its side: reusing a connection the server is
    # closing at that moment fails the request, which would be the harness's fault.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120), auto_decompress=False
    )


async def run_closed_loop(
    session: aiohttp.ClientSession, call: Call, *, total: int, concurrency: int
) -> Run:
    """Send `total` requests with `concurrency` in flight; time each one and the whole run."""
    run = Run(concurrency=concurrency)
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            started = time.perf_counter()
            try:
                async with session.post(call.url, data=call.body, headers=call.headers) as answer:
                    payload = await answer.read()
                    status = answer.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.failures.append(type(exc).__name__)
                continue
            elapsed = time.perf_counter() - started
            if status == 200 and call.check(payload):
                run.latencies.append(elapsed)
            else:
                run.failures.append(f"{status}: {payload[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    run.wall = time.perf_counter() - started
    return run


# --- the two paths ------------------------------------------------------------------------


def direct_image(payload: bytes) -> bool:
    body = orjson.loads(payload)
    image = (body.get("result") or {}).get("image")
    return body.get("success") is True and isinstance(image, str) and len(image) > 100


def proxied_image(payload: bytes) -> bool:
    body = orjson.loads(payload)
    data = body.get("data") or [{}]
    image = data[0].get("b64_json")
    return isinstance(image, str) and len(image) > 100


async def direct_call(emulator_url: str, account_id: str, token: str, job: ImageJob) -> Call:
    """The call the proxy itself would make for `job`: same fields, same multipart body."""
    form, content_type = build_body(job)
    if isinstance(form, aiohttp.FormData):
        writer = form()
        body, content_type = await writer.as_bytes(), writer.content_type
    else:
        body = form
    url = f"{emulator_url}/client/v4/accounts/{account_id}/ai/run/{job.model.id}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type or ""}
    return Call(url, body, headers, direct_image)


# Every benchmark body fixes a seed, which the proxy's seeded cache would answer from the second
# request on. `no-cache` makes each request make its image anew and write the cache entry: the
# cache-miss path, which is what these figures are for (docs/benchmarks.md).
MISS = {"Cache-Control": "no-cache"}


def proxy_generation_call(proxy_url: str, key: str, fields: dict) -> Call:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **MISS}
    return Call(f"{proxy_url}/v1/images/generations", orjson.dumps(fields), headers, proxied_image)


async def proxy_edit_call(proxy_url: str, key: str, fields: dict, images: list[tuple]) -> Call:
    """An `images.edit` as the openai SDK sends it: multipart with `image[]` parts."""
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, str(value))
    for filename, data, mime in images:
        form.add_field("image[]", data, filename=filename, content_type=mime)
    writer = form()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": writer.content_type, **MISS}
    return Call(f"{proxy_url}/v1/images/edits", await writer.as_bytes(), headers, proxied_image)
