"""`flux-proxy mcp`: an MCP server on stdin/stdout, for hosts that start a command.

One process and no HTTP server: the proxy's app is built as for `serve` and only its lifespan
is run, so the accounts, keys, DATA_DIR, REDIS_URL, the pool and the stores are exactly what
`serve` would have (with the same DATA_DIR or REDIS_URL it shares a running proxy's state),
and `--emulator` embeds the emulator the same way. stdout carries protocol messages only:
every log line goes to stderr.

The CLI imports this module for every command, so the MCP SDK and the app are imported only
when `mcp` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="also run the built-in Workers AI emulator with demo accounts (no Cloudflare)",
    )


def run(args: argparse.Namespace) -> int:
    import anyio

    from flux_proxy.logs import configure_logging
    from flux_proxy.settings import load_settings

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)  # to stderr
    with contextlib.ExitStack() as leaving:
        settings = leaving.enter_context(_throwaway_data_dir(settings, args.emulator))
        anyio.run(_serve, settings, args.emulator, leaving)
    return 0


@contextlib.contextmanager
def _throwaway_data_dir(settings, emulator: bool):
    """With `--emulator` and no DATA_DIR, files and batch outputs go to a temporary directory
    removed at exit, as the emulator's state is: a host starts the server in a working
    directory of its choosing, which may not be writable (Claude Desktop on macOS: `/`)."""
    if not emulator or "data_dir" in settings.model_fields_set:
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="flux-proxy-mcp-") as scratch:
        yield settings.model_copy(update={"data_dir": Path(scratch)})


async def _serve(settings, emulator: bool, leaving: contextlib.ExitStack) -> None:
    import secrets

    from mcp.server.mcpserver import Context

    from flux_proxy.api.caller import MCP_STDIO
    from flux_proxy.app import create_app
    from flux_proxy.mcp.context import ToolContext
    from flux_proxy.mcp.server import build_mcp_server

    # Whoever started the process owns what its calls make; no key is presented over stdio.
    caller = MCP_STDIO
    app = create_app(settings, embedded_emulator=emulator, mcp_http=False)
    async with app.router.lifespan_context(app):
        services = app.state.services
        base_url = (services.settings.public_base_url or "").rstrip("/")

        def resolve(ctx: Context) -> ToolContext:
            return ToolContext(
                services=services,
                caller=caller,
                request_id=f"mcp_{secrets.token_hex(16)}",
                base_url=base_url,
                local_files=True,
            )

        server = build_mcp_server(services.settings, resolve, local_files=True)
        stdin_open = await _serve_until_stopped(server, services)
    # Leaving the lifespan gave up what still ran; the pool counted those calls' estimates.
    if stdin_open:
        # SIGTERM while the host kept stdin open: the SDK's stdin reader is blocked in a
        # thread that no cancel reaches, and would hold the process until SIGKILL. All is
        # closed and settled by now, so leave at once (the throwaway DATA_DIR removed first).
        leaving.close()
        logging.shutdown()
        os._exit(0)


async def _serve_until_stopped(server, services) -> bool:
    """Serve MCP until the host closes stdin or sends SIGTERM (the MCP spec's shutdown: stdin
    closed, SIGTERM if the server outstays the host's patience, the SDK's client's 2 s, then
    SIGKILL). Calls already sent to Workers AI are billed either way, so after stdin closes
    they may finish and be kept, within SHUTDOWN_GRACE_SECONDS or until SIGTERM. True when
    stopped by SIGTERM with stdin still open (the server's task cannot end)."""
    loop = asyncio.get_running_loop()
    sigterm = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no such handlers
        loop.add_signal_handler(signal.SIGTERM, sigterm.set)
    stopped = asyncio.ensure_future(sigterm.wait())
    serving = asyncio.ensure_future(server.run_stdio_async())
    try:
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # stdin closed (or the server failed: raise why)
            finishing = asyncio.ensure_future(
                services.work.finish_sent(services.settings.shutdown_grace_seconds)
            )
            await asyncio.wait({finishing, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finishing.cancel()
            return False
        # SIGTERM with stdin open: cancel the calls being served (what was sent runs on in
        # the work layer, which the lifespan then gives up) without waiting on stdin.
        serving.cancel()
        await asyncio.wait({serving}, timeout=_UNWIND_SECONDS)
        return not serving.done()
    finally:
        stopped.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


_UNWIND_SECONDS = 0.5  # for cancelled tool calls to hand their sent calls to the work layer


# `flux-proxy mcp`: (help, add_arguments, run), registered in `cli.COMMANDS`.
COMMAND = ("serve MCP (Model Context Protocol) on stdin/stdout", add_arguments, run)
