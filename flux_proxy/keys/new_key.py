"""`flux-proxy keys new NAME [--role user] [--daily-images N] [--daily-neurons N]
[--model M ...]`: the `[[keys]]` block for API_KEYS_FILE (only the key's SHA-256) on stdout,
and the fresh random key, printed once, on stderr, so `>> keys.toml` is safe. The block is
read back as the proxy will read it (with this environment's MODEL_ALIASES) before anything is
shown, so a model name the proxy would refuse is an error here, not a keys file that no longer
loads."""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tomllib
from pathlib import Path

from flux_proxy.keys.keyfile import (
    NAME,
    RESERVED_NAME,
    KeysFileError,
    parse_keys,
    read_keys_file,
)
from flux_proxy.settings import Settings, load_settings

KEY_PREFIX = "fpx-"  # recognisable in a leaked-secret scan


def _non_negative(kind: type):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be 0 or more")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="make a new key and print its [[keys]] block")
    new.add_argument("name", help="the key's name: in logs, metrics and usage, never secret")
    new.add_argument("--role", choices=["user", "admin"], default="user")
    new.add_argument("--daily-images", type=_non_negative(int), default=None)
    new.add_argument("--daily-neurons", type=_non_negative(float), default=None)
    new.add_argument(
        "--model", action="append", dest="models", default=None, help="allowed model (repeat)"
    )


def toml_block(name: str, digest: str, args: argparse.Namespace) -> str:
    lines = ["[[keys]]", f"name = {json.dumps(name)}", f'key_sha256 = "{digest}"']
    lines.append(f"role = {json.dumps(args.role)}")
    if args.daily_images is not None:
        lines.append(f"daily_images = {args.daily_images}")
    if args.daily_neurons is not None:
        neurons = args.daily_neurons
        lines.append(f"daily_neurons = {int(neurons) if neurons.is_integer() else neurons}")
    if args.models:
        lines.append(f"models = {json.dumps(args.models)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    name = args.name
    if not NAME.match(name) or RESERVED_NAME.match(name):
        print(
            f"flux-proxy keys new: {name!r} cannot be a key's name: use 1-64 letters, digits, "
            "'.', '_' or '-' (not master, master-N, anonymous or mcp-stdio)",
            file=sys.stderr,
        )
        return 2
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    block = toml_block(name, digest, args)
    settings = load_settings()
    try:
        parse_keys(tomllib.loads(block), settings, where="the new key")
    except KeysFileError as error:
        print(f"flux-proxy keys new: {error}", file=sys.stderr)
        return 2
    if name in _names_in(settings.api_keys_file, settings):
        # Appended, a second table of that name would make the proxy refuse the whole file.
        print(
            f"flux-proxy keys new: API_KEYS_FILE ({settings.api_keys_file}) already has a key "
            f"named {name!r}: pick another name, or take the old table out first",
            file=sys.stderr,
        )
        return 2
    # stdout carries the block alone, so `keys new alice >> keys.toml` appends a valid table
    # (the blank line first keeps it apart from a file that ends without a newline) and never
    # writes the key into the file. The key and the instructions go to stderr: the terminal
    # shows them even when stdout is redirected.
    print(f"\n{block}", flush=True)
    print(
        f"flux-proxy keys new: the key for {name!r}, shown this once (only its hash is kept):\n"
        f"{key}\n"
        "Its [[keys]] block is on stdout: append it with `flux-proxy keys new ... >> keys.toml`, "
        "or paste it into API_KEYS_FILE; the proxy picks it up without a restart.",
        file=sys.stderr,
    )
    return 0


def _names_in(path: Path | None, settings: Settings) -> set[str]:
    """The names API_KEYS_FILE holds now; none when it is unset, missing or unreadable (the
    proxy reports a broken file itself; this only keeps a name from being used twice)."""
    if path is None or not Path(path).exists():
        return set()
    try:
        return {entry.caller.name for entry in read_keys_file(path, settings)}
    except KeysFileError:
        return set()
