"""flux-proxy benchmarks: the hot path against the direct path to the emulator.

    python benchmarks/run.py            # the full run (several minutes), writes results/latest.json
    python benchmarks/run.py --smoke    # a few seconds, for CI: same code, tiny amounts

The emulator and the proxy run as separate processes on loopback; this process is the load
generator. Every figure stands beside the same work done directly against the emulator in the
same run. See benchmarks/README.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling modules, when run as a script

import machine  # noqa: E402
import orjson  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402
from load import new_session  # noqa: E402
from processes import Cluster  # noqa: E402

ALL = ("overhead", "throughput", "memory", "failover", "references")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="flux-proxy benchmarks against the emulator")
    parser.add_argument("--smoke", action="store_true", help="tiny amounts, for CI")
    parser.add_argument("--out", type=Path, help="where to write the JSON")
    parser.add_argument(
        "--only", nargs="+", choices=ALL, default=list(ALL), help="run only these benchmarks"
    )
    parser.add_argument("--repetitions", type=int, help="alternating blocks per figure")
    parser.add_argument(
        "--payloads",
        nargs="+",
        choices=["synthetic", "photo"],
        help="emulator images for overhead and throughput: its own, photo-sized, or both",
    )
    parser.add_argument(
        "--workers", type=int, nargs="*", help="`serve --workers N` variants for throughput"
    )
    parser.add_argument("--note", default="", help="free text stored with the results")
    return parser.parse_args(argv)


def plan_for(args: argparse.Namespace) -> scenarios.Plan:
    plan = scenarios.SMOKE if args.smoke else scenarios.FULL
    changes = {}
    if args.repetitions:
        changes["repetitions"] = args.repetitions
    if args.payloads:
        changes["payloads"] = tuple(args.payloads)
    if args.workers is not None:
        changes["workers"] = tuple(args.workers)
    return dataclasses.replace(plan, **changes)


async def run_all(plan: scenarios.Plan, only: list[str], cluster: Cluster) -> dict:
    results: dict = {"overhead": [], "throughput": []}
    stages: dict[str, float] = {}
    emulators = {}

    def emulator(payload: str):
        if payload not in emulators:
            emulators[payload] = cluster.start_emulator(payload)
        return emulators[payload]

    async with new_session() as session:

        async def stage(name: str, work):
            started = time.perf_counter()
            value = await work
            stages[name] = round(time.perf_counter() - started, 1)
            return value

        for payload in plan.payloads:
            if "overhead" not in only and "throughput" not in only:
                break
            emu = emulator(payload)
            await scenarios.quiet_emulator(session, emu)
            proxy = cluster.start_proxy(emu)
            if "overhead" in only:
                results["overhead"] += await stage(
                    f"overhead {payload}", scenarios.overhead(session, emu, proxy, plan, payload)
                )
            if "throughput" in only:
                results["throughput"] += await stage(
                    f"throughput {payload}",
                    scenarios.throughput(session, cluster, emu, proxy, plan, payload),
                )
            cluster.stop(proxy)
        if "memory" in only:
            emu = emulator("photo")
            await scenarios.quiet_emulator(session, emu)
            results["memory"] = await stage("memory", scenarios.memory(session, cluster, emu, plan))
        main_emulator = emulator(plan.payloads[0])
        if "failover" in only:
            results["failover"] = await stage(
                "failover", scenarios.failover(session, cluster, main_emulator, plan)
            )
        if "references" in only:
            await scenarios.quiet_emulator(session, main_emulator)
            results["references"] = await stage(
                "references", scenarios.references(session, cluster, main_emulator, plan)
            )
    results["stage_seconds"] = stages
    return {k: v for k, v in results.items() if v != []}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_for(args)
    out = args.out or HERE / "results" / ("smoke.json" if args.smoke else "latest.json")
    results: dict = {
        "schema": 1,
        "mode": "smoke" if args.smoke else "full",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": args.note,
        "machine": machine.describe(),
        "conditions": {
            **dataclasses.asdict(plan),
            "transport": "loopback TCP, HTTP/1.1 keep-alive, one aiohttp client session",
            "proxy": "separate process: STATE_BACKEND=memory, DAILY_NEURONS=0, "
            "ACCOUNT_CONCURRENCY=128, LOG_LEVEL=INFO (log to a file)",
            "emulator": "separate process: latency 0, no allocation, no rate limit",
            "response_format": "b64_json",
        },
    }
    started = time.perf_counter()
    cluster = Cluster()
    try:
        results |= asyncio.run(run_all(plan, args.only, cluster))
    finally:
        cluster.close()
    results["conditions"]["load_average_at_end"] = machine.load_average()
    results["conditions"]["seconds"] = round(time.perf_counter() - started, 1)
    results["targets"] = report.targets(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(report.render(results))
    print(f"\nwrote {out} in {results['conditions']['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
