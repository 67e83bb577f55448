"""The processes a benchmark runs: the emulator and the proxy, each on its own port.

They run as child processes, never in the load generator's process, so each has its own
interpreter, event loop and memory figures (`/proc/<pid>/status`). Children get a fresh,
empty working directory so no `.env` of the developer's leaks into the figures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from flux_proxy.emulator import DEMO_ACCOUNTS

HERE = Path(__file__).resolve().parent
API_KEY = "bench-key-not-a-secret-0123456789"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status < 500:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far. Per request, this is the proxy's own cost, which
    other load on the machine changes far less than latency.

    The scheduler's per-thread run time (nanoseconds, /proc/<pid>/task/*/schedstat) is read
    rather than /proc/<pid>/stat, whose clock ticks are 10 ms: a handful of ~1 ms requests
    would otherwise often measure as zero. The proxy's threads (the event loop and the
    executor's pool) live as long as the process, so summing the live ones loses nothing."""
    try:
        return (
            sum(
                int((task / "schedstat").read_text().split()[0])
                for task in Path(f"/proc/{pid}/task").iterdir()
            )
            / 1e9
        )
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """uvicorn's worker processes under `--workers` (not multiprocessing's resource tracker,
    also a child)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return [pid for pid in found if _is_worker(pid)]


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    url: str
    log: Path
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers under `--workers`, else itself."""
        return children_of(self.pid) or [self.pid]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class Cluster:
    """Owns the children of one benchmark run and their scratch directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flux-bench-"))
        self.children: list[Child] = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], ready: str) -> Child:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, cwd=self.dir, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        child = Child(name, process, ready.rsplit("/", 1)[0], log)
        self.children.append(child)
        wait_until_up(ready, process, log)
        return child

    def start_emulator(self, payload: str) -> Child:
        """The emulator as its own process. `payload=photo` makes photo-sized answers."""
        port = free_port()
        if payload == "synthetic":  # the emulator exactly as shipped
            argv = [sys.executable, "-m", "flux_proxy", "emulator", "--port", str(port)]
        else:
            argv = [sys.executable, str(HERE / "emulator_process.py"), "--port", str(port)]
            argv += ["--payload", payload]
        argv_name = f"emulator-{payload}"
        child = self._spawn(argv_name, argv, _base_env(), f"http://127.0.0.1:{port}/")
        child.url = f"http://127.0.0.1:{port}"
        return child

    def start_proxy(
        self,
        emulator: Child,
        *,
        workers: int = 1,
        name: str = "proxy",
        **settings: str,
    ) -> Child:
        """`python -m flux_proxy serve`, with `--workers N` when N > 1."""
        port = free_port()
        env = _base_env() | proxy_env(emulator.url) | settings
        argv = [sys.executable, "-m", "flux_proxy", "serve", "--port", str(port)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        child = self._spawn(name, argv, env, f"http://127.0.0.1:{port}/health/live")
        child.url = f"http://127.0.0.1:{port}"
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        self.children.remove(child)

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _is_proxy_setting(k)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def _is_proxy_setting(name: str) -> bool:
    # Drop the caller's own proxy configuration so it cannot change what is measured.
    prefixes = ("CF_", "ACCOUNT_", "API_MASTER_KEY", "STATE_BACKEND", "REDIS_", "DAILY_NEURONS")
    return name.upper().startswith(prefixes)


def proxy_env(emulator_url: str) -> dict[str, str]:
    env = {
        "CF_API_BASE_URL": f"{emulator_url}/client/v4",
        "API_MASTER_KEY": API_KEY,
        "STATE_BACKEND": "memory",
        "DAILY_NEURONS": "0",
        # The emulator stands in for Cloudflare, which takes as many calls as we send; the
        # proxy's per-account limit (default 4) would otherwise be what the benchmark measures.
        "ACCOUNT_CONCURRENCY": "128",
        "LOG_LEVEL": "INFO",
    }
    for number, (account_id, token) in enumerate(DEMO_ACCOUNTS.items(), start=1):
        env[f"ACCOUNT_{number}"] = account_id
        env[f"CF_API_TOKEN_{number}"] = token
    return env
