"""`API_KEYS_FILE`: named keys with roles, daily quotas and allowed models, in TOML.

    [[keys]]
    name = "alice"                 # stable, non-secret: logs, metrics and records carry it
    key_sha256 = "9f86d0…"         # hex SHA-256 of the key (`flux-proxy keys new` prints it)
    role = "user"                  # or "admin"
    daily_images = 50              # optional, per UTC day
    daily_neurons = 2000           # optional, per UTC day
    models = ["flux-2-dev"]        # optional: short names, ids or aliases, as the API takes

A plain `key = "..."` instead of `key_sha256` is accepted with a warning. Anything else wrong
(an unknown field, a duplicate name or key, a model nobody serves) refuses the whole file, so a
typo can never quietly give a key more than was meant. Messages name the table and field,
never a key's value.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux_proxy.api.caller import Caller
from flux_proxy.api.model_lookup import lookup_model
from flux_proxy.settings import Settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
RESERVED_NAME = re.compile(r"^(master(-\d+)?|anonymous|mcp-stdio)$")
FIELDS = {"name", "key_sha256", "key", "role", "daily_images", "daily_neurons", "models"}


class KeysFileError(ValueError):
    """Why a keys file cannot be used; safe to log (no key values)."""


@dataclass(frozen=True)
class NamedKey:
    digest: bytes  # SHA-256 of the key
    caller: Caller
    plain: bool  # written in the file in clear (`key = ...`), which start-up warns about


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_keys_file(path: Path, settings: Settings) -> list[NamedKey]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise KeysFileError(
            f"cannot read {path}: {error.strerror or type(error).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise KeysFileError(f"{path} is not UTF-8 text") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KeysFileError(f"{path} is not valid TOML: {error}") from None
    return parse_keys(document, settings, where=str(path))


def parse_keys(document: dict[str, Any], settings: Settings, *, where: str) -> list[NamedKey]:
    extra = set(document) - {"keys"}
    if extra:
        raise KeysFileError(f"{where}: unknown top-level entries {sorted(extra)}; use [[keys]]")
    tables = document.get("keys", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise KeysFileError(f"{where}: `keys` must be an array of tables ([[keys]])")
    entries = [_entry(table, index, settings, where) for index, table in enumerate(tables, 1)]
    _refuse_duplicates(entries, where)
    return entries


def _entry(table: dict[str, Any], index: int, settings: Settings, where: str) -> NamedKey:
    name = table.get("name")
    label = f"{where}: key #{index}" + (f" ({name!r})" if isinstance(name, str) else "")
    unknown = set(table) - FIELDS
    if unknown:
        raise KeysFileError(f"{label}: unknown field(s) {sorted(unknown)}")
    if not isinstance(name, str) or not NAME.match(name):
        raise KeysFileError(
            f"{label}: `name` must be 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if RESERVED_NAME.match(name):
        raise KeysFileError(
            f"{label}: the name {name!r} is reserved (API_MASTER_KEY keys, --no-auth, MCP stdio)"
        )
    digest, plain = _digest(table, label)
    role = table.get("role", "user")
    if role not in ("admin", "user"):
        raise KeysFileError(f'{label}: `role` must be "admin" or "user"')
    caller = Caller(
        name=name,
        role=role,
        daily_images=_limit(table, "daily_images", label, whole=True),
        daily_neurons=_limit(table, "daily_neurons", label, whole=False),
        models=_models(table, label, settings),
    )
    return NamedKey(digest, caller, plain)


def _digest(table: dict[str, Any], label: str) -> tuple[bytes, bool]:
    hashed, plain = table.get("key_sha256"), table.get("key")
    if (hashed is None) == (plain is None):
        raise KeysFileError(f"{label}: give exactly one of `key_sha256` and `key`")
    if hashed is not None:
        if not isinstance(hashed, str) or not HEX_DIGEST.match(hashed):
            raise KeysFileError(f"{label}: `key_sha256` must be 64 hex digits")
        return bytes.fromhex(hashed), False
    if not isinstance(plain, str) or not plain or plain != plain.strip() or " " in plain:
        raise KeysFileError(f"{label}: `key` must be a non-empty string without spaces")
    return digest_of(plain), True


def _limit(table: dict[str, Any], field: str, label: str, *, whole: bool) -> Any:
    value = table.get(field)
    if value is None:
        return None
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        kind = "a whole number" if whole else "a number"
        raise KeysFileError(f"{label}: `{field}` must be {kind}, 0 or more")
    return int(value) if whole else float(value)


def _models(table: dict[str, Any], label: str, settings: Settings) -> frozenset[str] | None:
    names = table.get("models")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise KeysFileError(f"{label}: `models` must be a list of model names")
    ids = set()
    for name in names:
        spec = lookup_model(name, settings)
        if spec is None:
            raise KeysFileError(f"{label}: no model is called {name!r}")
        ids.add(spec.id)
    return frozenset(ids)


def _refuse_duplicates(entries: list[NamedKey], where: str) -> None:
    names: set[str] = set()
    digests: set[bytes] = set()
    for entry in entries:
        if entry.caller.name in names:
            raise KeysFileError(f"{where}: the name {entry.caller.name!r} is used twice")
        if entry.digest in digests:
            raise KeysFileError(f"{where}: key {entry.caller.name!r} repeats an earlier key")
        names.add(entry.caller.name)
        digests.add(entry.digest)
