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
    anyio.run(_serve, settings, args.emulator)
    return 0


async def _serve(settings, emulator: bool) -> None:
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
        await server.run_stdio_async()


# `flux-proxy mcp`: (help, add_arguments, run), registered in `cli.COMMANDS`.
COMMAND = ("serve MCP (Model Context Protocol) on stdin/stdout", add_arguments, run)
