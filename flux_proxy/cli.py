"""`flux-proxy serve | emulator | ...`: a small argparse dispatcher.

Each subcommand is one `(add_arguments, run)` pair in `COMMANDS`; adding one (e.g. `check`)
is a function pair and one line there. `run` returns the process exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from flux_proxy import batch_cli
from flux_proxy.catalogue_check import COMMAND as MODELS_COMMAND
from flux_proxy.mcp.stdio import COMMAND as MCP_COMMAND
from flux_proxy.settings import EXIT_CONFIG, ConfigError, config_failure, load_settings

_NO_KEY = """\
flux-proxy: API_MASTER_KEY is not set, so anyone who can reach the port could spend your
Cloudflare neurons. Set it (one key, or several separated by commas), for example:

    export API_MASTER_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"

or put API_MASTER_KEY=... in .env. To serve WITHOUT a key anyway, pass --no-auth."""

_NO_AUTH_WARNING = """\
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!!  WARNING: --no-auth: /v1/* answers ANYONE who can reach this port, with no key.  !!
!!  Every request spends the configured accounts' neurons. Use only on a trusted     !!
!!  machine or network.                                                              !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"""


_EMULATOR_WORKERS = """\
flux-proxy: --emulator runs the Workers AI emulator inside the proxy's own process, so it
cannot be combined with --workers above 1. Run the emulator on its own
(`flux-proxy emulator --port 8787`, CF_API_BASE_URL=http://127.0.0.1:8787/client/v4) and
start the workers against it, or leave --workers at 1."""


# --- serve -----------------------------------------------------------------------------------


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="also run the built-in Workers AI emulator with demo accounts (no Cloudflare)",
    )
    parser.add_argument(
        "--no-auth", action="store_true", help="serve without API_MASTER_KEY (not recommended)"
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes (default 1); they share state through the store, so use "
        "STATE_BACKEND=sqlite (the default) or redis, not memory",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from flux_proxy.app import create_app
    from flux_proxy.logs import configure_logging

    # Given explicitly, so a NO_AUTH in the environment or .env cannot turn the key off: serving
    # without one is this flag's choice only (NO_AUTH is how the flag reaches --workers).
    settings = load_settings(no_auth=args.no_auth)
    if not settings.master_keys and not settings.api_keys_file and not args.no_auth:
        print(_NO_KEY, file=sys.stderr)
        return EXIT_CONFIG
    if args.no_auth:
        print(_NO_AUTH_WARNING, file=sys.stderr, flush=True)
    workers = getattr(args, "workers", 1)
    if workers > 1 and args.emulator:
        print(_EMULATOR_WORKERS, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    if workers > 1:
        # Workers are separate processes that build their own app from the environment
        # (`app_from_environment`), so the command-line flags travel as variables.
        os.environ["NO_AUTH"] = "true" if args.no_auth else "false"
        target: object = "flux_proxy.app:app_from_environment"
    else:
        target = create_app(settings, embedded_emulator=args.emulator)
    uvicorn.run(
        target,
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=False,  # the app logs one structured line per request
        proxy_headers=False,  # forwarded headers are judged by TRUSTED_PROXIES, not uvicorn
        server_header=False,
        log_config=None,  # uvicorn's own lines go through configure_logging (JSON or text)
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    return 0


# --- emulator --------------------------------------------------------------------------------


def _emulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8787, help="port to listen on")


def emulator(args: argparse.Namespace) -> int:
    from flux_proxy.emulator import run_emulator

    run_emulator(args.host, args.port)
    return 0


# --- check -----------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    from flux_proxy.check import main as run_check

    return run_check(load_settings())


# --- keys ------------------------------------------------------------------------------------


def _keys_command():
    from flux_proxy.keys import new_key

    return new_key.add_arguments, new_key.run


# --- dispatch --------------------------------------------------------------------------------

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

COMMANDS: dict[str, Command] = {
    "serve": ("run the proxy", _serve_arguments, serve),
    "emulator": ("run the Workers AI emulator alone", _emulator_arguments, emulator),
    "check": (
        "verify every account's token (free) and show what the pool has learned",
        lambda parser: None,
        check,
    ),
    "keys": ("named API keys: `keys new NAME` prints a new one", *_keys_command()),
    "batch": ("a file of prompts as one batch", batch_cli.add_arguments, batch_cli.run),
    "models": MODELS_COMMAND,
    "mcp": MCP_COMMAND,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flux-proxy",
        description="OpenAI Images API in front of Cloudflare Workers AI, with account failover.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(subcommands.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except ConfigError as error:  # e.g. STATE_BACKEND=redis without REDIS_URL, at start-up
        return config_failure(str(error))
    except KeyboardInterrupt:
        return 130
