"""The results as Markdown tables (printed, and pasted into docs/benchmarks.md), and the
targets from issue 6 judged against them."""

from __future__ import annotations

MIB = 1024 * 1024


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def targets(results: dict) -> list[dict]:
    """Issue 6's targets. They are judged on every payload measured; the issue's own
    condition is the emulator's images (`synthetic`), photo-sized ones are the harder case."""
    found = []
    for row in results.get("overhead", []):
        if row["size"] == "1024x1024" and row["concurrency"] == 1:
            found.append(
                {
                    "name": f"p50 overhead, 1024x1024, c=1 ({row['payload']} images)",
                    "target": "<= 2 ms",
                    "value": f"{row['overhead_p50_ms']} ms",
                    "met": row["overhead_p50_ms"] <= 2.0,
                }
            )
    for row in results.get("throughput", []):
        if row["launcher"] == "flux-proxy serve":
            found.append(
                {
                    "name": f"throughput, 1024x1024, c=32, one process ({row['payload']} images)",
                    "target": ">= 0.8 of direct",
                    "value": row["fraction_of_direct"],
                    "met": row["fraction_of_direct"] >= 0.8,
                }
            )
    mem = results.get("memory")
    if mem:
        per_byte = mem["peak_over_baseline_per_image_byte"]
        found.append(
            {
                "name": f"peak RSS, {mem['concurrency']} x {mem['size']} in flight (photo images)",
                "target": "<= 3 x image bytes + baseline < 80 MB",
                "value": f"{per_byte} x + {mem['baseline_rss_mib']} MiB",
                "met": per_byte <= 3.0 and mem["baseline_rss_mib"] * MIB < 80_000_000,
            }
        )
    for row in results.get("failover", []):
        found.append(
            {
                "name": f"upstream calls, account 1 spent, c={row['concurrency']}",
                "target": "1 wasted call (1,001 per 1,000)",
                "value": f"{row['upstream_calls']} for {row['requests']}",
                "met": row["upstream_calls"] - row["images"] <= 1,
            }
        )
    return found


def _cpu(row: dict, path: str) -> str:
    """CPU per image on one path, in total and by process: where a shared CPU goes."""
    used = row["cpu_ms_per_request"][path]
    shown = {name: ms for name, ms in used.items() if path == "proxy" or name != "proxy"}
    parts = ", ".join(f"{name.split()[0]} {ms}" for name, ms in shown.items())
    return f"{sum(shown.values()):.2f} ({parts})"


def _header(results: dict) -> list[str]:
    machine, conditions = results["machine"], results["conditions"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    return [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"{machine['os']}, Python {machine['python']}; {versions}",
        f"Load average at start {machine['load_average_at_start']}, at end "
        f"{conditions.get('load_average_at_end')}; mode {results['mode']}; "
        f"{conditions['repetitions']} repetitions; "
        f"emulator images: {', '.join(conditions['payloads'])}",
    ]


def _overhead(rows: list[dict]) -> list[str]:
    header = ["images", "size", "c", "n/path", "direct p50", "proxy p50", "+p50", "p50 ratio"]
    header += ["direct p99", "proxy p99", "+p99", "direct img/s", "proxy img/s"]
    header += ["proxy CPU ms/req"]
    body = []
    for r in rows:
        d, p = r["direct"], r["proxy"]
        body.append(
            [
                r["payload"],
                r["size"],
                r["concurrency"],
                d["requests"],
                d["p50_ms"],
                p["p50_ms"],
                r["overhead_p50_ms"],
                r["ratio_p50"],
                d["p99_ms"],
                p["p99_ms"],
                r["overhead_p99_ms"],
                d["images_per_s"],
                p["images_per_s"],
                r["cpu_ms_per_request"]["proxy"]["proxy"],
            ]
        )
    return ["", "### 1. Overhead (ms)", "", _table(header, body)]


def _throughput(rows: list[dict]) -> list[str]:
    header = ["images", "launcher", "workers", "direct img/s", "proxy img/s", "proxy/direct"]
    header += ["CPU ms/image, direct path", "CPU ms/image, proxy path"]
    body = [
        [
            r["payload"],
            r["launcher"],
            r["workers"],
            r["direct_images_per_s"],
            r["proxy_images_per_s"],
            r["fraction_of_direct"],
            _cpu(r, "direct"),
            _cpu(r, "proxy"),
        ]
        for r in rows
    ]
    return ["", "### 2. Throughput, 1024x1024, c=32", "", _table(header, body)]


def _memory(m: dict) -> list[str]:
    header = ["image (b64)", "in flight", "RSS at start", "warm baseline", "peak (VmHWM)"]
    header += ["(peak - baseline) / in flight"]
    row = [
        f"{m['image_b64_bytes'] / MIB:.2f} MiB",
        f"{m['image_bytes_in_flight_mib']} MiB",
        f"{m['rss_at_start_mib']} MiB",
        f"{m['baseline_rss_mib']} MiB",
        f"{m['peak_rss_mib']} MiB",
        f"{m['peak_over_baseline_per_image_byte']} x",
    ]
    title = f"### 3. Memory, {m['concurrency']} concurrent {m['size']} (photo images)"
    return ["", title, "", _table(header, [row])]


def _failover(rows: list[dict]) -> list[str]:
    header = ["c", "requests", "images", "upstream calls", "per 1,000", "calls to account 1"]
    header += ["seed per 1,000"]
    body = [
        [
            r["concurrency"],
            r["requests"],
            r["images"],
            r["upstream_calls"],
            r["calls_per_1000_requests"],
            r["wasted_calls_on_account_1"],
            r["seed_calls_per_1000_requests"],
        ]
        for r in rows
    ]
    return ["", "### 4. Failover cost, account 1 spent (3036)", "", _table(header, body)]


def _references(r: dict) -> list[str]:
    photos = ", ".join(
        f"{p['name']} {p['bytes'] / MIB:.1f} MiB → {p['scaled_size']} "
        f"({p['scale_ms_in_process']} ms)"
        for p in r["photos"]
    )
    header = ["body", "direct p50 (pre-scaled)", "proxy p50", "scale+forward p50"]
    header += ["proxy p50 at c=4", "baseline RSS", "peak c=1", "peak c=4"]
    row = [
        f"{r['request_body_mib']} MiB",
        f"{r['direct']['p50_ms']} ms",
        f"{r['proxy']['p50_ms']} ms",
        f"{r['scale_and_forward_p50_ms']} ms",
        f"{r['proxy_c4']['p50_ms']} ms",
        f"{r['baseline_rss_mib']} MiB",
        f"{r['peak_rss_c1_mib']} MiB",
        f"{r['peak_rss_c4_mib']} MiB",
    ]
    title = "### 5. References: images.edit with four photos"
    return [
        "",
        title,
        "",
        f"Photos (scaling time in one thread): {photos}",
        "",
        _table(header, [row]),
    ]


def _targets(found: list[dict]) -> list[str]:
    body = [[t["name"], t["target"], t["value"], "yes" if t["met"] else "NO"] for t in found]
    return ["", "### Targets", "", _table(["target", "wanted", "measured", "met"], body)]


def render(results: dict) -> str:
    out = _header(results)
    if results.get("overhead"):
        out += _overhead(results["overhead"])
    if results.get("throughput"):
        out += _throughput(results["throughput"])
    if results.get("memory"):
        out += _memory(results["memory"])
    if results.get("failover"):
        out += _failover(results["failover"])
    if results.get("references"):
        out += _references(results["references"])
    if results.get("targets"):
        out += _targets(results["targets"])
    return "\n".join(out)
