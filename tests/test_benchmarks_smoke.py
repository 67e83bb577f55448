"""The benchmark harness works end to end: `benchmarks/run.py --smoke` starts the emulator and
the proxy as separate processes, drives both paths, prints the tables and writes well-formed
JSON. It checks behaviour (every request answered, the failover promise, sane memory figures),
never speed: CI machines are too noisy for timed assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    finished = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    return json.loads(out.read_text()), finished.stdout


def _latency_ok(summary: dict) -> None:
    assert summary["requests"] > 0
    assert summary["failures"] == 0
    assert 0 < summary["p50_ms"] <= summary["p99_ms"]
    assert math.isfinite(summary["images_per_s"]) and summary["images_per_s"] > 0


def test_smoke_run_prints_every_table_with_machine_details(smoke):
    _, printed = smoke
    for title in ("### 1. Overhead", "### 2. Throughput", "### 3. Memory", "### 4. Failover"):
        assert title in printed
    assert "### 5. References" in printed and "### Targets" in printed
    assert "Machine:" in printed and "cores" in printed


def test_smoke_json_describes_machine_and_conditions(smoke):
    results, _ = smoke
    assert results["schema"] == 1 and results["mode"] == "smoke"
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["python"].count(".") == 2
    assert machine["versions"]["aiohttp"] and machine["versions"]["starlette"]
    assert results["conditions"]["response_format"] == "b64_json"
    assert results["conditions"]["seconds"] > 0


def test_overhead_rows_pair_direct_and_proxy_for_each_concurrency(smoke):
    results, _ = smoke
    rows = results["overhead"]
    assert {row["concurrency"] for row in rows} == {1, 4}
    for row in rows:
        _latency_ok(row["direct"])
        _latency_ok(row["proxy"])
        assert row["overhead_p50_ms"] == pytest.approx(
            row["proxy"]["p50_ms"] - row["direct"]["p50_ms"], abs=0.02
        )
        cpu = row["cpu_ms_per_request"]
        assert cpu["proxy"]["proxy"] > 0  # the proxy did the work on its path...
        assert cpu["direct"]["proxy"] < cpu["proxy"]["proxy"]  # ...and not on the direct one


def test_throughput_row_is_a_fraction_of_direct(smoke):
    results, _ = smoke
    (row,) = results["throughput"]
    assert row["launcher"] == "flux-proxy serve" and row["concurrency"] == 32
    assert row["fraction_of_direct"] == pytest.approx(
        row["proxy_images_per_s"] / row["direct_images_per_s"], rel=0.01
    )


def test_memory_peak_is_measured_over_a_warm_baseline(smoke):
    results, _ = smoke
    memory = results["memory"]
    assert memory["requests"] == memory["concurrency"]
    assert 0 < memory["rss_at_start_mib"] <= memory["peak_rss_mib"]
    assert memory["baseline_rss_mib"] <= memory["peak_rss_mib"]
    assert memory["image_bytes_in_flight_mib"] > 0


def test_failover_with_account_one_spent_wastes_one_call_at_concurrency_one(smoke):
    results, _ = smoke
    sequential = next(row for row in results["failover"] if row["concurrency"] == 1)
    assert sequential["images"] == sequential["requests"]
    # The first request learns that account 1 is spent; no later request asks it again.
    assert sequential["calls_per_account"]["1"] == 1
    assert sequential["upstream_calls"] == sequential["requests"] + 1
    for row in results["failover"]:
        assert row["images"] == row["requests"]
        assert sum(row["calls_per_account"].values()) == row["upstream_calls"]


def test_references_are_scaled_below_the_model_limit_and_forwarded(smoke):
    results, _ = smoke
    references = results["references"]
    assert len(references["photos"]) == 4
    for photo in references["photos"]:
        width, height = map(int, photo["scaled_size"].split("x"))
        assert max(width, height) < 512
    _latency_ok(references["direct"])
    _latency_ok(references["proxy"])
    _latency_ok(references["proxy_c4"])


def test_targets_are_judged_from_the_figures(smoke):
    results, _ = smoke
    names = [target["name"] for target in results["targets"]]
    assert any(name.startswith("throughput") for name in names)
    assert any(name.startswith("upstream calls") for name in names)
    assert all(isinstance(target["met"], bool) for target in results["targets"])


def test_request_path_benchmark_measures_its_three_cases():
    script = ROOT / "benchmarks" / "request_path.py"
    finished = subprocess.run(
        [sys.executable, str(script), "--requests", "30", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-4000:]
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("python 3.") and "1 rounds of 30 requests" in lines[0]
    figures = {line[:14].strip(): float(line[14:].split()[0]) for line in lines[1:]}
    assert set(figures) == {"unseeded", "seeded repeat", "seeded miss"}
    assert all(value > 0 for value in figures.values())
