"""`flux-proxy batch` as a user runs it: a subprocess against a real proxy process (SQLite
state, batch runner) and the emulator process, over HTTP."""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from procs import API_KEY, clean_env, shared_emulator, spawn, start_proxy

PROMPTS = "a red bicycle\n\na lighthouse at dusk\na fox in snow\n  \na tea cup\nmoss\na kite\n"
LINES = ["0001", "0003", "0004", "0006", "0007", "0008"]  # line numbers of the prompts


@pytest.fixture
def emulator():
    emulator = shared_emulator()
    yield emulator
    emulator.config(latency=0.0)


@pytest.fixture
def proxy(tmp_path, emulator):
    proxy = start_proxy(
        tmp_path / "proxy",
        emulator,
        DATA_DIR=tmp_path / "data",
        ACCOUNT_CONCURRENCY=1,
        BATCH_POLL_SECONDS=0.2,
    )
    yield proxy
    proxy.proc.stop()


def batch_argv(proxy, prompts: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flux_proxy", "batch", str(prompts), "--url", proxy.url,
            "--poll", "0.3", *extra]  # fmt: skip


def run_cli(argv: list[str], cwd: Path, key: str = API_KEY) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        env=clean_env(FLUX_PROXY_API_KEY=key),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def images_in(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: Image.open(io.BytesIO(p.read_bytes())).size for p in sorted(out.iterdir())}


def test_prompts_become_one_batch_and_every_image_is_saved_by_its_line(tmp_path, proxy, emulator):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "shots"
    done = run_cli(batch_argv(proxy, prompts, "--out", str(out), "--size", "512x256",
                              "--steps", "6"), tmp_path)  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    assert images_in(out) == {f"{line}.png": (512, 256) for line in LINES}
    calls = emulator.calls()
    assert len(calls) == len(LINES)  # one upstream call per line, none twice
    assert {call["fields"]["steps"] for call in calls} == {"6"}  # multipart fields
    assert "neurons: at today's budgets" in done.stdout  # the estimate, before submitting
    assert f"6 of {len(LINES)} done" in done.stdout
    assert API_KEY not in done.stdout + done.stderr


def test_stopped_and_resumed_it_downloads_only_what_is_missing(tmp_path, proxy, emulator):
    emulator.config(latency=1.0)  # 6 lines, 3 at a time: a few seconds to stop it in
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "out"
    log = (tmp_path / "first.log").open("w+")
    first = subprocess.Popen(
        batch_argv(proxy, prompts, "--out", str(out), "--key", API_KEY),
        env=clean_env(),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while "submitted batch_" not in Path(log.name).read_text():
        assert first.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=20) == 130
    said = Path(log.name).read_text()
    batch_id = said.split("submitted ", 1)[1].split()[0]
    assert f"--resume {batch_id} --out {out}" in said  # how to pick it up again

    resumed = run_cli(batch_argv(proxy, prompts, "--resume", batch_id, "--out", str(out)), tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert sorted(images_in(out)) == [f"{line}.png" for line in LINES]
    assert len(emulator.calls()) == len(LINES)

    # A missing image and one cut off mid-write (a stale .part) are fetched again, only those.
    kept = hashlib.sha256((out / "0004.png").read_bytes()).hexdigest()
    (out / "0004.png").unlink()
    (out / "0003.png").unlink()
    (out / "0003.png.part").write_bytes(b"\x89PNG half an image")
    again = run_cli(batch_argv(proxy, prompts, "--resume", batch_id, "--out", str(out)), tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    saved = [line for line in again.stdout.splitlines() if line.startswith("saved ")]
    assert sorted(saved) == ["saved 0003.png", "saved 0004.png"]
    assert hashlib.sha256((out / "0004.png").read_bytes()).hexdigest() == kept
    assert sorted(images_in(out)) == [f"{line}.png" for line in LINES]  # the .part is gone
    assert len(emulator.calls()) == len(LINES)  # nothing was made again


def test_a_batch_the_proxy_refuses_exits_non_zero_with_the_reason_and_spends_nothing(
    tmp_path, proxy, emulator
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a harbour\na boat\n")
    out = tmp_path / "out"
    failed = run_cli(batch_argv(proxy, prompts, "--out", str(out), "--size", "13x13"), tmp_path)
    assert failed.returncode == 1
    assert "failed" in failed.stdout
    assert "line 1" in failed.stdout.lower()
    assert emulator.calls() == []
    assert list(out.iterdir()) == []

    refused = run_cli(batch_argv(proxy, prompts, "--out", str(out)), tmp_path, key="wrong")
    assert refused.returncode == 2
    assert "401" in refused.stderr
    missing = run_cli(batch_argv(proxy, tmp_path / "nope.txt"), tmp_path)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    never = tmp_path / "never"
    unknown = run_cli(
        batch_argv(proxy, prompts, "--resume", "batch_nope", "--out", str(never)), tmp_path
    )
    assert unknown.returncode == 2 and "404" in unknown.stderr
    assert not never.exists()


# --- the pieces ---------------------------------------------------------------------------------


def test_prompt_lines_are_named_by_their_line_and_carry_the_chosen_fields():
    from flux_proxy.batch_cli import prompt_lines

    lines = prompt_lines("  a cat \n\n\ta dog\n", {"size": "512x512", "steps": 4})
    assert lines == [
        {
            "custom_id": "0001",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": "a cat", "size": "512x512", "steps": 4},
        },
        {
            "custom_id": "0003",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": "a dog", "size": "512x512", "steps": 4},
        },
    ]
    many = prompt_lines("x\n" * 12000, {})
    assert many[0]["custom_id"] == "00001" and many[-1]["custom_id"] == "12000"  # sorts as text


def test_the_estimate_reads_as_the_page_shows_it():
    from flux_proxy.batch_cli import describe_estimate

    assert describe_estimate({"estimated_neurons": 37500, "estimated_days": 3}) == (
        "≈ 37,500 neurons: at today's budgets about 3 days"
    )
    assert describe_estimate({"estimated_neurons": 937.5, "estimated_days": 1}) == (
        "≈ 938 neurons: at today's budgets it fits in today"
    )
    assert describe_estimate({"estimated_neurons": 10, "estimated_days": None}) == "≈ 10 neurons"


def test_each_image_is_saved_as_its_line_finishes_not_only_at_the_end(tmp_path, proxy, emulator):
    emulator.config(latency=1.0)  # 6 lines, 3 at a time: the batch runs for a few seconds
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "early"
    cli = subprocess.Popen(
        batch_argv(proxy, prompts, "--out", str(out), "--key", API_KEY),
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    seen_early = None
    deadline = time.monotonic() + 60
    while cli.poll() is None and time.monotonic() < deadline:
        saved = list(out.glob("*.png")) if out.is_dir() else []
        if saved:
            batches = httpx.get(proxy.base_url + "/batches", headers=proxy.auth).json()["data"]
            if batches and batches[0]["status"] == "in_progress":
                seen_early = (len(saved), batches[0]["request_counts"]["completed"])
                break
        time.sleep(0.05)
    assert cli.wait(timeout=60) == 0
    assert seen_early is not None, "no image was saved while the batch was still running"
    assert 1 <= seen_early[0] < len(LINES)
    assert sorted(images_in(out)) == [f"{line}.png" for line in LINES]
    assert len(emulator.calls()) == len(LINES)


def test_it_waits_out_a_proxy_restart_and_finishes_the_batch(tmp_path, proxy, emulator):
    emulator.config(latency=1.0)  # 6 lines, 3 at a time: time to restart the proxy in
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "out"
    log = tmp_path / "cli.log"
    with log.open("w") as log_file:
        cli = subprocess.Popen(
            # Small images: the calls in flight at the stop were sent, so they are billed (and
            # settled at their estimate) on top of the six lines that are then made again.
            batch_argv(proxy, prompts, "--out", str(out), "--key", API_KEY, "--size", "512x512"),
            env=clean_env(),
            cwd=tmp_path,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    again = None
    try:
        deadline = time.monotonic() + 30
        while "submitted batch_" not in log.read_text():
            assert cli.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proxy.proc.stop()  # a redeploy: the batch stays in the SQLite state under DATA_DIR
        time.sleep(2.0)  # several of the command's checks find nobody answering
        assert cli.poll() is None, log.read_text()
        argv = [sys.executable, "-m", "flux_proxy", "serve", "--port", str(proxy.proc.port)]
        again = spawn("proxy", argv, proxy.env, tmp_path / "again", proxy.proc.port)
        again.wait_until("/health/live")
        assert cli.wait(timeout=90) == 0, log.read_text()
    finally:
        if cli.poll() is None:
            cli.kill()
        if again is not None:
            again.stop()
    assert sorted(images_in(out)) == [f"{line}.png" for line in LINES]
