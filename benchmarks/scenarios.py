"""The five benchmarks. Each one does the same work directly against the emulator and
through the proxy, in the same run, and returns plain dicts for the table and the JSON.

Blocks alternate (direct, proxy, then proxy, direct, ...) so a burst of outside load hurts
both paths alike rather than whichever happened to run during it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

import aiohttp
import orjson
from load import (
    Call,
    Run,
    direct_call,
    percentile,
    proxy_edit_call,
    proxy_generation_call,
    run_closed_loop,
)
from photos import reference_set
from processes import API_KEY, Child, Cluster, memory_kib

from flux_proxy.emulator import DEMO_ACCOUNTS
from flux_proxy.images import prepare_reference
from flux_proxy.job import ImageJob
from flux_proxy.models import find_model

MODEL = find_model("flux-2-dev")
PROMPT = "a red fox in fresh snow at dawn, telephoto, detailed fur"
SEED = 42
ACCOUNTS = list(DEMO_ACCOUNTS.items())  # (account id, token), account 1 first
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How much work each benchmark does; `--smoke` shrinks all of it."""

    sizes: tuple[tuple[int, int], ...]
    concurrencies: tuple[int, ...]
    repetitions: int
    requests_c1: int  # per block at concurrency 1
    rounds_per_task: int  # per block at higher concurrency: concurrency x rounds requests
    throughput_rounds: int
    workers: tuple[int, ...]  # `serve --workers N` variants to measure (beside plain `serve`)
    memory_rounds: int
    memory_size: tuple[int, int]
    memory_concurrency: int
    failover_requests: int
    reference_bytes: int
    reference_requests: int
    # Emulator images for overhead and throughput: `synthetic` is the emulator's own (tens of
    # KB), `photo` is photo-sized (megabytes). Memory always uses `photo`.
    payloads: tuple[str, ...]


FULL = Plan(
    sizes=((512, 512), (1024, 1024), (1920, 1080)),
    concurrencies=(1, 32),
    repetitions=3,
    requests_c1=100,
    rounds_per_task=8,
    throughput_rounds=12,
    workers=(2,),
    memory_rounds=4,
    memory_size=(1920, 1080),
    memory_concurrency=64,
    failover_requests=1000,
    reference_bytes=4 * MIB,
    reference_requests=8,
    payloads=("synthetic", "photo"),
)

SMOKE = Plan(
    sizes=((512, 512),),
    concurrencies=(1, 4),
    repetitions=1,
    requests_c1=5,
    rounds_per_task=2,
    throughput_rounds=2,
    workers=(),
    memory_rounds=1,
    memory_size=(512, 512),
    memory_concurrency=8,
    failover_requests=20,
    reference_bytes=256 * 1024,
    reference_requests=1,
    payloads=("synthetic",),
)


def job(width: int, height: int, references=()) -> ImageJob:
    return ImageJob(
        model=MODEL,
        prompt=PROMPT,
        width=width,
        height=height,
        steps=MODEL.default_steps,  # what the proxy sends when the caller names no steps
        seed=SEED,
        references=tuple(references),
    )


def generation_fields(width: int, height: int) -> dict:
    return {
        "model": MODEL.short_name,
        "prompt": PROMPT,
        "size": f"{width}x{height}",
        "seed": SEED,
        "response_format": "b64_json",
    }


async def control(session: aiohttp.ClientSession, emulator: Child, path: str, body: dict):
    async with session.post(f"{emulator.url}/__emulator/{path}", json=body) as answer:
        answer.raise_for_status()
        return await answer.json()


async def quiet_emulator(session: aiohttp.ClientSession, emulator: Child) -> None:
    """Forget everything, then switch off added latency, the allocation and the rate limit."""
    await control(session, emulator, "reset", {})
    await control(
        session, emulator, "config", {"latency": 0, "daily_neurons": 0, "rate_limit_per_minute": 0}
    )


async def emulator_calls(session: aiohttp.ClientSession, emulator: Child) -> list[dict]:
    async with session.get(f"{emulator.url}/__emulator/calls") as answer:
        answer.raise_for_status()
        return (await answer.json())["calls"]


def latency_summary(run: Run) -> dict:
    ms = [x * 1000 for x in run.latencies]
    return {
        "requests": run.ok,
        "failures": len(run.failures),
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "images_per_s": round(run.per_second, 1),
    }


@dataclass
class Pair:
    """Both paths of one figure: the merged runs, the per-repetition p50 differences, and the
    CPU each process spent per request on each path."""

    direct: Run
    proxy: Run
    spreads: list[float]
    cpu_ms: dict[str, dict[str, float]]


async def paired_blocks(
    session: aiohttp.ClientSession,
    direct: Call,
    proxied: Call,
    *,
    total: int,
    concurrency: int,
    repetitions: int,
    processes: dict[str, Child] | None = None,
) -> Pair:
    """Warm both paths, then alternate blocks. Besides latency, count the CPU time each
    process (and this load generator) used per request: unlike latency, CPU time per request
    hardly changes when other work shares the machine."""
    for call in (direct, proxied):
        await run_closed_loop(session, call, total=max(4, concurrency), concurrency=concurrency)
    merged = {"direct": Run(concurrency=concurrency), "proxy": Run(concurrency=concurrency)}
    meters = dict(processes or {})
    cpu = {path: dict.fromkeys([*meters, "load generator"], 0.0) for path in merged}
    spreads: list[float] = []
    for rep in range(repetitions):
        order = ["direct", "proxy"] if rep % 2 == 0 else ["proxy", "direct"]
        runs = {}
        for name in order:
            call = direct if name == "direct" else proxied
            before = {key: child.cpu_seconds() for key, child in meters.items()}
            own = time.process_time()
            runs[name] = await run_closed_loop(session, call, total=total, concurrency=concurrency)
            cpu[name]["load generator"] += time.process_time() - own
            for key, child in meters.items():
                cpu[name][key] += child.cpu_seconds() - before[key]
            merged[name].merge(runs[name])
        p50 = {name: percentile(run.latencies, 0.5) for name, run in runs.items()}
        spreads.append(round((p50["proxy"] - p50["direct"]) * 1000, 2))
    per_request = {
        path: {
            key: round(seconds * 1000 / max(1, merged[path].ok), 2) for key, seconds in used.items()
        }
        for path, used in cpu.items()
    }
    return Pair(merged["direct"], merged["proxy"], spreads, per_request)


def fail_loudly(run: Run, what: str) -> None:
    if run.failures:
        raise RuntimeError(f"{what}: {len(run.failures)} failed, first: {run.failures[0]}")


# --- 1. overhead -------------------------------------------------------------------------


async def overhead(session, emulator: Child, proxy: Child, plan: Plan, payload: str) -> list[dict]:
    account_id, token = ACCOUNTS[0]
    rows = []
    for width, height in plan.sizes:
        direct = await direct_call(emulator.url, account_id, token, job(width, height))
        proxied = proxy_generation_call(proxy.url, API_KEY, generation_fields(width, height))
        for concurrency in plan.concurrencies:
            total = plan.requests_c1 if concurrency == 1 else concurrency * plan.rounds_per_task
            pair = await paired_blocks(
                session,
                direct,
                proxied,
                total=total,
                concurrency=concurrency,
                repetitions=plan.repetitions,
                processes={"emulator": emulator, "proxy": proxy},
            )
            d, p = pair.direct, pair.proxy
            fail_loudly(d, "direct")
            fail_loudly(p, "proxy")
            ds, ps = latency_summary(d), latency_summary(p)
            rows.append(
                {
                    "payload": payload,
                    "size": f"{width}x{height}",
                    "concurrency": concurrency,
                    "direct": ds,
                    "proxy": ps,
                    "overhead_p50_ms": round(ps["p50_ms"] - ds["p50_ms"], 2),
                    "overhead_p99_ms": round(ps["p99_ms"] - ds["p99_ms"], 2),
                    "ratio_p50": round(ps["p50_ms"] / ds["p50_ms"], 2),
                    "overhead_p50_ms_per_repetition": pair.spreads,
                    "cpu_ms_per_request": pair.cpu_ms,
                }
            )
    return rows


# --- 2. throughput -----------------------------------------------------------------------


async def throughput(
    session, cluster: Cluster, emulator: Child, proxy: Child, plan: Plan, payload: str
) -> list[dict]:
    """Images/s at c=32, 1024x1024: `serve` (one process), then `serve --workers N`."""
    concurrency, (width, height) = 32, (1024, 1024)
    account_id, token = ACCOUNTS[0]
    direct = await direct_call(emulator.url, account_id, token, job(width, height))
    fields = generation_fields(width, height)
    rows = []
    variants: list[tuple[str, int, Child | None]] = [("flux-proxy serve", 1, proxy)]
    variants += [(f"flux-proxy serve --workers {n}", n, None) for n in plan.workers if n > 1]
    for launcher, workers, running in variants:
        target = running or cluster.start_proxy(emulator, workers=workers, name=f"workers{workers}")
        try:
            pair = await paired_blocks(
                session,
                direct,
                proxy_generation_call(target.url, API_KEY, fields),
                total=concurrency * plan.throughput_rounds,
                concurrency=concurrency,
                repetitions=plan.repetitions,
                processes={"emulator": emulator, "proxy": target},
            )
            d, p = pair.direct, pair.proxy
        finally:
            if running is None:
                cluster.stop(target)
        fail_loudly(p, launcher)
        rows.append(
            {
                "payload": payload,
                "launcher": launcher,
                "workers": workers,
                "size": f"{width}x{height}",
                "concurrency": concurrency,
                "direct_images_per_s": round(d.per_second, 1),
                "proxy_images_per_s": round(p.per_second, 1),
                "fraction_of_direct": round(p.per_second / d.per_second, 3),
                "cpu_ms_per_request": pair.cpu_ms,
            }
        )
    return rows


# --- 3. memory ---------------------------------------------------------------------------


async def memory(session, cluster: Cluster, emulator: Child, plan: Plan) -> dict:
    """Peak RSS of a fresh proxy with 64 1920x1080 requests in flight, over its warm idle RSS.
    Photo-sized images: with the emulator's 48 KB ones there would be little to measure."""
    concurrency, (width, height) = plan.memory_concurrency, plan.memory_size
    account_id, token = ACCOUNTS[0]
    direct = await direct_call(emulator.url, account_id, token, job(width, height))
    async with session.post(direct.url, data=direct.body, headers=direct.headers) as answer:
        image_b64_bytes = len(orjson.loads(await answer.read())["result"]["image"])
    proxy = cluster.start_proxy(emulator, name="proxy-memory")
    try:
        pid = proxy.pid
        at_start = memory_kib(pid)["VmRSS"]
        call = proxy_generation_call(proxy.url, API_KEY, generation_fields(width, height))
        fail_loudly(await run_closed_loop(session, call, total=3, concurrency=1), "warm-up")
        await asyncio.sleep(0.2)
        baseline = memory_kib(pid)["VmRSS"]
        run = await run_closed_loop(
            session, call, total=concurrency * plan.memory_rounds, concurrency=concurrency
        )
        fail_loudly(run, "memory")
        peak = memory_kib(pid)["VmHWM"]
    finally:
        cluster.stop(proxy)
    in_flight = concurrency * image_b64_bytes
    return {
        "size": f"{width}x{height}",
        "concurrency": concurrency,
        "requests": run.ok,
        "image_b64_bytes": image_b64_bytes,
        "image_bytes_in_flight_mib": round(in_flight / MIB, 1),
        "rss_at_start_mib": round(at_start / 1024, 1),
        "baseline_rss_mib": round(baseline / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_over_baseline_per_image_byte": round((peak * 1024 - baseline * 1024) / in_flight, 2),
        "peak_per_image_byte": round(peak * 1024 / in_flight, 2),
    }


# --- 4. failover -------------------------------------------------------------------------


async def failover(session, cluster: Cluster, emulator: Child, plan: Plan) -> list[dict]:
    """Account 1 spent: upstream calls per 1,000 requests (each on a fresh proxy)."""
    rows = []
    width, height = 512, 512
    for concurrency in (1, 32):
        await quiet_emulator(session, emulator)
        first = ACCOUNTS[0][0]
        # Account 1 alone gets an allocation, and it is used up: Cloudflare would answer 3036.
        await control(
            session,
            emulator,
            "usage",
            {"account": first, "daily_neurons": 10_000, "neurons": 10_000},
        )
        proxy = cluster.start_proxy(emulator, name=f"proxy-failover-c{concurrency}")
        try:
            call = proxy_generation_call(proxy.url, API_KEY, generation_fields(width, height))
            run = await run_closed_loop(
                session, call, total=plan.failover_requests, concurrency=concurrency
            )
        finally:
            cluster.stop(proxy)
        fail_loudly(run, "failover")
        calls = await emulator_calls(session, emulator)
        per_account = {
            n: sum(1 for c in calls if c["account"] == account_id)
            for n, (account_id, _) in enumerate(ACCOUNTS, start=1)
        }
        scale = 1000 / plan.failover_requests
        rows.append(
            {
                "concurrency": concurrency,
                "requests": plan.failover_requests,
                "images": run.ok,
                "upstream_calls": len(calls),
                "calls_per_1000_requests": round(len(calls) * scale, 1),
                "wasted_calls_on_account_1": per_account[1],
                "calls_per_account": per_account,
                "seed_calls_per_1000_requests": 2000,
            }
        )
    await quiet_emulator(session, emulator)
    return rows


# --- 5. references -----------------------------------------------------------------------


async def references(session, cluster: Cluster, emulator: Child, plan: Plan) -> dict:
    """images.edit with four ~4 MB photos: the proxy checks and scales them below 512x512
    and forwards; the direct path sends the already-scaled images (what the proxy sends)."""
    photos = reference_set(plan.reference_bytes)
    scale_ms = []
    prepared = []
    for name, data, _ in photos:
        started = time.perf_counter()
        prepared.append(prepare_reference(data, param=name, max_side=MODEL.max_reference_side))
        scale_ms.append(round((time.perf_counter() - started) * 1000, 1))
    width, height = 1024, 1024
    account_id, token = ACCOUNTS[0]
    direct = await direct_call(emulator.url, account_id, token, job(width, height, prepared))
    proxy = cluster.start_proxy(emulator, name="proxy-references")
    try:
        proxied = await proxy_edit_call(
            proxy.url, API_KEY, generation_fields(width, height), photos
        )
        await asyncio.sleep(0.2)
        baseline = memory_kib(proxy.pid)["VmRSS"]
        pair = await paired_blocks(
            session,
            direct,
            proxied,
            total=plan.reference_requests,
            concurrency=1,
            repetitions=plan.repetitions,
            processes={"emulator": emulator, "proxy": proxy},
        )
        d, p, spreads = pair.direct, pair.proxy, pair.spreads
        peak_c1 = memory_kib(proxy.pid)["VmHWM"]
        concurrent = await run_closed_loop(session, proxied, total=4 * 2, concurrency=4)
        peak_c4 = memory_kib(proxy.pid)["VmHWM"]
    finally:
        cluster.stop(proxy)
    for run, what in ((d, "direct"), (p, "edits"), (concurrent, "edits c=4")):
        fail_loudly(run, what)
    ds, ps = latency_summary(d), latency_summary(p)
    body_bytes = len(proxied.body)
    return {
        "photos": [
            {
                "name": name,
                "bytes": len(data),
                "scaled_bytes": len(ref.data),
                "scaled_size": f"{ref.width}x{ref.height}",
                "scale_ms_in_process": ms,
            }
            for (name, data, _), ref, ms in zip(photos, prepared, scale_ms, strict=True)
        ],
        "request_body_mib": round(body_bytes / MIB, 2),
        "direct": ds,
        "proxy": ps,
        "scale_and_forward_p50_ms": round(ps["p50_ms"] - ds["p50_ms"], 1),
        "scale_and_forward_p50_ms_per_repetition": spreads,
        "cpu_ms_per_request": pair.cpu_ms,
        "proxy_c4": latency_summary(concurrent),
        "baseline_rss_mib": round(baseline / 1024, 1),
        "peak_rss_c1_mib": round(peak_c1 / 1024, 1),
        "peak_rss_c4_mib": round(peak_c4 / 1024, 1),
        "peak_over_baseline_c1_per_body_byte": round((peak_c1 - baseline) * 1024 / body_bytes, 2),
        "peak_over_baseline_c4_per_body_byte": round(
            (peak_c4 - baseline) * 1024 / (4 * body_bytes), 2
        ),
    }
