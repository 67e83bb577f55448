"""Running the emulator: in a test's event loop (`start_emulator`) or as a process
(`run_emulator`, behind `flux-proxy emulator --port 8787`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, TextIO

from aiohttp import web
from pydantic import SecretStr

from flux_proxy.emulator.app import API_PREFIX, create_emulator_app
from flux_proxy.settings import AccountConfig

# Demo credentials for `serve --emulator` and the emulator's own accounts. They open nothing but
# the emulator, so they are not secrets; they are still never printed.
DEMO_ACCOUNTS: dict[str, str] = {
    f"demo{number:028d}": f"demo-token-{number}" for number in (1, 2, 3)
}


def demo_account_configs() -> list[AccountConfig]:
    """`DEMO_ACCOUNTS` as the proxy's numbered accounts (1, 2, 3), for `serve --emulator`."""
    return [
        AccountConfig(number=number, account_id=account_id, token=SecretStr(token))
        for number, (account_id, token) in enumerate(DEMO_ACCOUNTS.items(), start=1)
    ]


async def start_emulator(
    host: str = "127.0.0.1",
    port: int = 0,
    accounts: dict[str, str] | None = None,
    **options: Any,
) -> tuple[web.AppRunner, str]:
    """Serve an emulator in the running loop; returns the runner (call `cleanup()` to stop) and
    the base URL ending in `/client/v4`. Port 0 picks a free port. `options` go to
    `create_emulator_app` (daily_neurons, clock, latency, rate_limit_per_minute, ...)."""
    app = create_emulator_app(DEMO_ACCOUNTS if accounts is None else accounts, **options)
    # Cancel handlers whose client went away (a `timeout` fault sleeps for an hour), and do not
    # wait long for stragglers on shutdown.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = runner.addresses[0][1]
    return runner, f"http://{_url_host(host)}:{real_port}{API_PREFIX}"


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def banner(base_url: str, accounts: dict[str, str]) -> str:
    lines = [
        "=" * 72,
        "flux-proxy Workers AI EMULATOR - this is NOT Cloudflare.",
        "Synthetic images and pretend neurons, for development, tests, demos and benchmarks.",
        "=" * 72,
        f"  API base URL : {base_url}",
        f"  point the proxy at it: CF_API_BASE_URL={base_url}",
        "  accounts (tokens are in flux_proxy.emulator.DEMO_ACCOUNTS when these are the demos):",
    ]
    lines += [f"    {number}. {account_id}" for number, account_id in enumerate(accounts, start=1)]
    root = base_url.removesuffix(API_PREFIX)
    lines += [
        f"  control: {root}/__emulator/faults | reset | calls | usage | config",
        "  Ctrl+C to stop.",
    ]
    return "\n".join(lines)


async def serve_emulator(
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    accounts: dict[str, str] | None = None,
    out: TextIO | None = None,
    **options: Any,
) -> None:
    """Serve until cancelled, after printing a banner that says this is an emulator."""
    accounts = DEMO_ACCOUNTS if accounts is None else accounts
    runner, base_url = await start_emulator(host, port, accounts, **options)
    try:
        print(banner(base_url, accounts), file=out or sys.stdout, flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_emulator(host: str = "127.0.0.1", port: int = 8787, **options: Any) -> None:
    """Blocking entry point for the CLI: serve until Ctrl+C."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_emulator(host, port, **options))
