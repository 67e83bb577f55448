"""Shared fixtures: real servers on free ports, in background threads.

- `emulator`: the Workers AI emulator (one per test session, reset before each test) with
  three accounts, and helpers that drive its `/__emulator/` control endpoints over HTTP:
  `fault(**rule)`, `calls()`, `reset()`, `set_usage(account_id, neurons)`.
- `make_proxy(**settings_overrides)`: starts `create_app` under a real `uvicorn.Server`
  pointed at the emulator, with a `MemoryStore` and a `FrozenClock`; returns a `ProxyHandle`
  (url, base_url, key, settings, clock, store). Every proxy is stopped after its test.
- `proxy`: one default proxy. `openai_client` / `async_openai_client`: the real openai SDK
  pointed at it, with retries off so upstream call counts are exact.
- `png(width, height)` / `jpeg(...)`: small real images for reference-image tests.

Servers run in their own threads and event loops, so sync and async tests both drive them over
real HTTP, the way callers do.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import redis
import uvicorn
from PIL import Image
from pydantic import SecretStr

from flux_proxy.app import create_app
from flux_proxy.clock import FrozenClock
from flux_proxy.emulator import start_emulator
from flux_proxy.settings import AccountConfig, Settings
from flux_proxy.store.memory import MemoryStore

API_KEY = "test-key-0123456789abcdef"
# Cloudflare-shaped ids and distinctive tokens, so a leak into any output is easy to spot.
EMULATOR_ACCOUNTS: list[tuple[int, str, str]] = [
    (number, f"{number:02d}e2e0c0ffee{number:022d}", f"tok-SECRET-{number}-{'x' * 24}")
    for number in (1, 2, 3)
]


# --- images ------------------------------------------------------------------


def picture(width: int, height: int, fmt: str = "PNG", color=(200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
def png() -> Callable[..., bytes]:
    return lambda width=64, height=64: picture(width, height, "PNG")


@pytest.fixture
def jpeg() -> Callable[..., bytes]:
    return lambda width=64, height=64: picture(width, height, "JPEG")


# --- a background event loop ------------------------------------------------------------------


class LoopThread:
    """An event loop running in a daemon thread; `run(coro)` waits for a result from it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# --- the emulator ------------------------------------------------------------------


@dataclass
class EmulatorHandle:
    base_url: str  # ends in /client/v4: the proxy's CF_API_BASE_URL
    root: str  # where /__emulator/ lives
    accounts: list[tuple[int, str, str]]  # (N, account id, token)

    def account_id(self, number: int) -> str:
        return next(a for n, a, _ in self.accounts if n == number)

    def account_configs(self) -> list[AccountConfig]:
        return [
            AccountConfig(number=n, account_id=a, token=SecretStr(t)) for n, a, t in self.accounts
        ]

    def _post(self, path: str, body: dict) -> dict:
        response = httpx.post(f"{self.root}/__emulator/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def fault(self, **rule: Any) -> dict:
        """Add a fault rule, e.g. `fault(account=id, kind="error", status=429, code=3036)`."""
        rule.setdefault("kind", "error")
        return self._post("faults", rule)

    def calls(self, account: str | None = None) -> list[dict]:
        """The emulator's call log (model runs), optionally for one account id."""
        response = httpx.get(f"{self.root}/__emulator/calls", timeout=10)
        response.raise_for_status()
        calls = response.json()["calls"]
        return [c for c in calls if account is None or c["account"] == account]

    def reset(self) -> None:
        self._post("reset", {})

    def set_usage(self, account_id: str, neurons: float) -> dict:
        return self._post("usage", {"account": account_id, "neurons": neurons})


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[EmulatorHandle]:
    loop = LoopThread()
    accounts = {account_id: token for _, account_id, token in EMULATOR_ACCOUNTS}
    runner, base_url = loop.run(start_emulator("127.0.0.1", 0, accounts))
    try:
        yield EmulatorHandle(
            base_url=base_url,
            root=base_url.removesuffix("/client/v4"),
            accounts=list(EMULATOR_ACCOUNTS),
        )
    finally:
        loop.run(runner.cleanup())
        loop.stop()


@pytest.fixture
def emulator(_emulator_server: EmulatorHandle) -> EmulatorHandle:
    """The session's emulator, with faults, call log and usage cleared for this test."""
    _emulator_server.reset()
    return _emulator_server


# --- the proxy ------------------------------------------------------------------


@dataclass
class ProxyHandle:
    url: str  # http://127.0.0.1:PORT
    key: str
    settings: Settings
    clock: FrozenClock
    store: Any
    server: uvicorn.Server = field(repr=False)
    thread: threading.Thread = field(repr=False)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_proxy(app, settings: Settings, clock, store, key: str) -> ProxyHandle:
    """Serve `app` with a real uvicorn server on a free port in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.01)
    return ProxyHandle(f"http://127.0.0.1:{port}", key, settings, clock, store, server, thread)


OWN_STORE = "own store"  # make_proxy(store=OWN_STORE): the app opens STATE_BACKEND's store


@pytest.fixture
def make_proxy(emulator: EmulatorHandle, tmp_path) -> Iterator[Callable[..., ProxyHandle]]:
    """`make_proxy(**settings_overrides)`: a running proxy on the emulator's three accounts.

    Extra keyword arguments `clock=`, `store=`, `pool=`, `client=` go to `create_app`;
    `store=OWN_STORE` lets the app open the store its settings name (SQLite, Redis).
    """
    started: list[ProxyHandle] = []

    def factory(
        *,
        clock: FrozenClock | None = None,
        store: Any = None,
        pool: Any = None,
        client: Any = None,
        **overrides: Any,
    ) -> ProxyHandle:
        values: dict[str, Any] = {
            "api_master_key": API_KEY,
            "cf_api_base_url": emulator.base_url,
            "accounts": emulator.account_configs(),
            "state_backend": "memory",
            "upstream_read_timeout": 10.0,
            "request_deadline": 30.0,
            # Files the proxy keeps on disk (batch files and images) stay out of the checkout.
            "data_dir": tmp_path / "proxy-data",
        }
        values.update(overrides)
        settings = Settings(**values)
        clock = clock or FrozenClock(time.time())
        if store == OWN_STORE:  # the app opens the store its settings name, as in production
            store = None
        elif store is None:
            store = MemoryStore(clock)
        app = create_app(settings, clock=clock, store=store, pool=pool, client=client)
        key = settings.master_keys[0] if settings.master_keys else ""
        handle = start_proxy(app, settings, clock, store, key)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


@pytest.fixture
def proxy(make_proxy: Callable[..., ProxyHandle]) -> ProxyHandle:
    return make_proxy()


@pytest.fixture
def openai_client(proxy: ProxyHandle) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=60)
    yield client
    client.close()


@pytest.fixture
async def async_openai_client(proxy: ProxyHandle):
    client = openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=60
    )
    yield client
    await client.close()


# --- Redis ---------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix on REDIS_URL that no other test uses; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"flux-proxy-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()
