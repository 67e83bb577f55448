"""Real processes for end-to-end tests: `python -m flux_proxy serve`, `python -m flux_proxy
emulator` and `redis-server`, each on a free port, with an environment built from scratch.

Every child gets a clean environment (no CF_*/ACCOUNT_*/REDIS_*... from the developer's
shell) and runs in its own directory, so no `.env` or `.dev.vars` of the checkout leaks in.
Output goes to a file, not a pipe, so a chatty child never blocks and the test can read
everything it wrote (the log tests search it for secrets).

Tests import these helpers (pytest puts tests/ on sys.path). Everything here blocks; async
tests call it through `asyncio.to_thread`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flux_proxy.emulator import DEMO_ACCOUNTS

API_KEY = "e2e-master-key-0b5c8a7d6e4f3a2b1c"
# The emulator process serves the demo accounts: (N, account id, token) in N order.
ACCOUNTS: list[tuple[int, str, str]] = [
    (number, account_id, token)
    for number, (account_id, token) in enumerate(DEMO_ACCOUNTS.items(), start=1)
]
START_TIMEOUT = 20.0

# Variables a developer's shell may hold that would change what a child does.
_INHERITED_PREFIXES = (
    "CF_",
    "ACCOUNT_",
    "REDIS_",
    "STATE_",
    "DATA_DIR",
    "API_MASTER_KEY",
    "LOG_",
    "DAILY_NEURONS",
    "ROUTING_",
    "UPSTREAM_",
    "REQUEST_",
    "SLOT_",
    "PUBLIC_BASE_URL",
    "NO_AUTH",
    "API_KEYS_FILE",
    "KEYS_RELOAD",
    "USAGE_HISTORY",
    "METRICS_AUTH",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def account_id(number: int) -> str:
    return ACCOUNTS[number - 1][1]


def token(number: int) -> str:
    return ACCOUNTS[number - 1][2]


def clean_env(**values: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_INHERITED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({key: str(value) for key, value in values.items() if value is not None})
    return env


def account_env(numbers: tuple[int, ...] = (1, 2, 3), **tokens: str) -> dict[str, str]:
    """`ACCOUNT_<N>`/`CF_API_TOKEN_<N>` for the demo accounts; `tokens={"3": "bad"}`-style
    overrides go in as `CF_API_TOKEN_3="bad"`."""
    env: dict[str, str] = {}
    for number in numbers:
        env[f"ACCOUNT_{number}"] = account_id(number)
        env[f"CF_API_TOKEN_{number}"] = tokens.get(f"CF_API_TOKEN_{number}", token(number))
    return env


@dataclass
class Proc:
    """A child process with its output in `log_path`."""

    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._close_log()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go within a few seconds."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait_until(self, path: str, timeout: float = START_TIMEOUT) -> None:
        """Poll `GET path` until it answers (any status) or the child dies."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-4000:]}")
            try:
                httpx.get(self.root + path, timeout=1.0)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not answer {path}:\n{self.output()[-4000:]}"
                    ) from None
                time.sleep(0.05)


def spawn(name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int) -> Proc:
    cwd.mkdir(parents=True, exist_ok=True)
    log_path = cwd / f"{name}-{uuid.uuid4().hex[:6]}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Proc(name, process, port, log_path, log_file)


# --- the emulator ------------------------------------------------------------------


@dataclass
class Emulator:
    proc: Proc

    @property
    def root(self) -> str:
        return self.proc.root

    @property
    def base_url(self) -> str:
        return self.root + "/client/v4"

    def _post(self, path: str, body: dict) -> dict:
        response = httpx.post(f"{self.root}/__emulator/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self._post("reset", {})

    def fault(self, **rule: object) -> dict:
        rule.setdefault("kind", "error")
        return self._post("faults", rule)

    def set_usage(self, number: int, **values: object) -> dict:
        return self._post("usage", {"account": account_id(number), **values})

    def config(self, **values: object) -> dict:
        return self._post("config", values)

    def log(self) -> dict:
        response = httpx.get(f"{self.root}/__emulator/calls", timeout=10)
        response.raise_for_status()
        return response.json()

    def calls(self, number: int | None = None) -> list[dict]:
        """Model runs the emulator received, optionally only those for account N."""
        calls = self.log()["calls"]
        return [c for c in calls if number is None or c["account"] == account_id(number)]


def start_emulator(workdir: Path) -> Emulator:
    port = free_port()
    argv = [sys.executable, "-m", "flux_proxy", "emulator", "--port", str(port)]
    proc = spawn("emulator", argv, clean_env(), workdir, port)
    proc.wait_until("/")
    return Emulator(proc)


_shared: Emulator | None = None


def shared_emulator() -> Emulator:
    """One emulator process for the whole test run (starting one costs a second or more),
    reset before it is handed out; stopped when the test run's interpreter exits."""
    global _shared
    if _shared is None or not _shared.proc.alive():
        _shared = start_emulator(Path(tempfile.mkdtemp(prefix="flux-proxy-emulator-")))
        atexit.register(_shared.proc.stop)
    _shared.reset()
    return _shared


# --- the proxy ------------------------------------------------------------------


@dataclass
class Proxy:
    proc: Proc
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.proc.root

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def health(self) -> dict:
        return httpx.get(self.url + "/health", headers=self.auth, timeout=10).json()

    def account(self, number: int) -> dict:
        return next(a for a in self.health()["accounts"] if a["number"] == number)

    def generate(
        self, timeout: float = 30.0, headers: dict | None = None, **body
    ) -> httpx.Response:
        body.setdefault("prompt", "a lighthouse at dusk")
        return httpx.post(
            self.base_url + "/images/generations",
            json=body,
            headers={**self.auth, **(headers or {})},
            timeout=timeout,
        )

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def log_lines(self) -> list[dict]:
        """The JSON lines of the proxy's output (LOG_FORMAT=json); other lines are skipped."""
        lines = []
        for line in self.proc.output().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines


def launch_proxy(workdir: Path, emulator: Emulator | None, **env: object) -> Proxy:
    """Start `python -m flux_proxy serve` without waiting; call `ready()` on the result."""
    port = free_port()
    values: dict[str, object] = {
        "API_MASTER_KEY": API_KEY,
        "LOG_FORMAT": "json",
        "UPSTREAM_READ_TIMEOUT": 10,
        "REQUEST_DEADLINE": 30,
    }
    if emulator is not None:
        values["CF_API_BASE_URL"] = emulator.base_url
        values.update(account_env())
    values.update(env)
    full_env = clean_env(**values)
    argv = [sys.executable, "-m", "flux_proxy", "serve", "--port", str(port)]
    return Proxy(spawn("proxy", argv, full_env, workdir, port), full_env)


def ready(*proxies: Proxy) -> None:
    for proxy in proxies:
        proxy.proc.wait_until("/health/live")


def start_proxy(workdir: Path, emulator: Emulator | None, **env: object) -> Proxy:
    proxy = launch_proxy(workdir, emulator, **env)
    ready(proxy)
    return proxy


def run_check(workdir: Path, env: dict[str, object], timeout: float = 30.0):
    """`python -m flux_proxy check`; returns the CompletedProcess (text, stdout+stderr apart)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "flux_proxy", "check"],
        env=clean_env(**env),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- redis ------------------------------------------------------------------


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


def start_redis(workdir: Path, port: int | None = None) -> Proc:
    """A throw-away redis-server (no persistence) on a free port, or on `port` to restart."""
    port = port or free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    proc = spawn("redis", argv, clean_env(), workdir, port)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start:\n{proc.output()[-2000:]}")
        time.sleep(0.05)
