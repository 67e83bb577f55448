"""`flux-proxy check`: can the configured accounts serve, and what has the proxy learned?

Each token is checked with Cloudflare's free `GET /user/tokens/verify` (no neurons spent), and
each account's state (parked, cooling, disabled, today's spend) is read from the configured
state store, so the answer reflects what a running proxy has learned. One line per account;
tokens are never printed, ids only masked.

Exit codes: 0 at least one account can serve, 1 none can, 2 the configuration is unusable.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

from pydantic import ValidationError

from flux_proxy.clock import Clock
from flux_proxy.pool import AccountPool
from flux_proxy.settings import AccountConfig, ConfigError, Settings
from flux_proxy.store.base import StateStore
from flux_proxy.store.factory import open_store
from flux_proxy.upstream.client import WorkersAIClient

EXIT_OK = 0
EXIT_NONE_CAN_SERVE = 1
EXIT_CONFIG = 2

# Verifying a token is a small JSON answer; no reason to wait as long as for an image.
VERIFY_READ_TIMEOUT = 15.0

TOKEN_WORDS = {True: "ok", False: "invalid", None: "unreachable"}

NO_ACCOUNTS = (
    "No Cloudflare accounts are configured.\n"
    "Set CF_API_TOKEN_1 and ACCOUNT_1 (then CF_API_TOKEN_2 and ACCOUNT_2, and so on) in the\n"
    "environment or in .env; .env.example describes every setting."
)


@dataclass(frozen=True)
class AccountLine:
    """What `check` says about one account."""

    number: int
    account: str  # masked id
    token: str  # ok | invalid | unreachable
    state: str  # available | cooling | parked | disabled | unknown
    until: str | None
    reason: str | None
    neurons_left: str
    can_serve: bool


def main(settings: Settings | None = None) -> int:
    """Entry point for the CLI. Builds the settings itself when given none."""
    if settings is None:
        try:
            settings = Settings()
        except (ConfigError, ValidationError) as exc:
            print(f"Configuration error: {describe_config_error(exc)}", file=sys.stderr)
            return EXIT_CONFIG
    return asyncio.run(run_check(settings))


async def run_check(
    settings: Settings,
    *,
    clock: Clock | None = None,
    out: TextIO = sys.stdout,
) -> int:
    if not settings.accounts:
        print(NO_ACCOUNTS, file=out)
        return EXIT_CONFIG
    clock = clock or Clock()
    try:
        store = open_store(settings, clock)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=out)
        return EXIT_CONFIG

    client = WorkersAIClient(
        settings.cf_api_base_url,
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=min(settings.upstream_read_timeout, VERIFY_READ_TIMEOUT),
    )
    await client.start()
    try:
        verdicts, (snapshot, store_detail) = await asyncio.gather(
            verify_tokens(client, settings.accounts),
            read_state(settings, client, store, clock),
        )
    finally:
        await client.close()

    lines = [
        account_line(account, verdicts[account.number], snapshot)
        for account in sorted(settings.accounts, key=lambda a: a.number)
    ]
    print(header(settings, store, store_detail), file=out)
    print(file=out)
    print(render_table(lines), file=out)
    print(file=out)
    print(summary(lines, settings, store_known=snapshot is not None), file=out)
    return EXIT_OK if any(line.can_serve for line in lines) else EXIT_NONE_CAN_SERVE


async def verify_tokens(
    client: WorkersAIClient, accounts: list[AccountConfig]
) -> dict[int, bool | None]:
    results = await asyncio.gather(*(client.verify_token(account) for account in accounts))
    return {account.number: result for account, result in zip(accounts, results, strict=True)}


async def read_state(
    settings: Settings, client: WorkersAIClient, store: StateStore, clock: Clock
) -> tuple[dict[int, dict] | None, str]:
    """The pool's snapshot per account number, or None with the reason it could not be read.

    A Redis store that cannot be reached falls back to an empty local state; that would show
    every account as available, so an unhealthy store counts as unknown state instead.
    """
    try:
        await store.open()
    except Exception as exc:  # any failure here is reported, never a traceback
        return None, f"could not be opened ({type(exc).__name__})"
    try:
        status = await store.status()
        if not status.get("ok"):
            if status.get("serving"):  # the proxy's own fallback; the check has none
                return None, "unreachable"
            return None, str(status.get("detail") or "not healthy")
        entries = await AccountPool(settings, client, store, clock).snapshot()
        return {entry["number"]: entry for entry in entries}, str(status.get("detail") or "")
    except Exception as exc:
        return None, f"could not be read ({type(exc).__name__})"
    finally:
        # The check is over; a failed close changes nothing it reports.
        with contextlib.suppress(Exception):
            await store.close()


def account_line(
    account: AccountConfig, verdict: bool | None, snapshot: dict[int, dict] | None
) -> AccountLine:
    entry = None if snapshot is None else snapshot.get(account.number)
    if entry is None:
        return AccountLine(
            number=account.number,
            account=account.masked_id,
            token=TOKEN_WORDS[verdict],
            state="unknown",
            until=None,
            reason=None,
            neurons_left="?",
            can_serve=False,
        )
    return AccountLine(
        number=account.number,
        account=entry.get("account") or account.masked_id,
        token=TOKEN_WORDS[verdict],
        state=entry["state"],
        until=entry.get("until"),
        reason=entry.get("reason"),
        neurons_left=neurons_left(entry),
        can_serve=verdict is True and AccountPool.is_usable_now(entry),
    )


def neurons_left(entry: dict) -> str:
    remaining = entry.get("neurons_remaining_today")
    if remaining is None:
        return "unlimited"
    budget = entry.get("daily_budget")
    if budget is None:
        return _number(remaining)
    return f"{_number(remaining)} of {_number(budget)}"


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def describe_state(line: AccountLine) -> str:
    text = line.state
    if line.until:
        text += f" until {line.until}"
    elif line.state == "disabled":
        text += " until the token is fixed"
    if line.reason:
        text += f" ({line.reason})"
    return text


def render_table(lines: list[AccountLine]) -> str:
    rows = [("N", "account", "token", "state", "neurons left today")]
    rows += [
        (str(line.number), line.account, line.token, describe_state(line), line.neurons_left)
        for line in lines
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    )


def header(settings: Settings, store: StateStore, store_detail: str) -> str:
    count = len(settings.accounts)
    noun = "account" if count == 1 else "accounts"
    text = (
        f"flux-proxy check: {count} {noun}, upstream API at "
        f"{public_url(settings.cf_api_base_url)}\n"
        f"state store: {store.name}, {store_detail}"
    )
    if store.name == "memory":
        text += "\n(the memory store starts empty: a running proxy's state is not visible here)"
    return text


def summary(lines: list[AccountLine], settings: Settings, *, store_known: bool) -> str:
    serving = sum(line.can_serve for line in lines)
    verb = "account can" if len(lines) == 1 else "accounts can"
    text = f"{serving} of {len(lines)} {verb} serve now."
    if serving:
        return text
    hints = []
    invalid = [line.number for line in lines if line.token == "invalid"]
    if invalid:
        names = ", ".join(f"CF_API_TOKEN_{number}" for number in invalid)
        hints.append(
            f"The upstream API rejects the token of {names}: make a new one with the "
            "permission Account > Workers AI > Read."
        )
    if any(line.token == "unreachable" for line in lines):
        hints.append(
            f"Could not get an answer from {public_url(settings.cf_api_base_url)} "
            "(network, proxy or CF_API_BASE_URL)."
        )
    if not store_known:
        hints.append("The state store could not be read, so no account's state is known.")
    if any(line.state in ("parked", "cooling") for line in lines):
        hints.append("Parked and cooling accounts come back by themselves at the time shown.")
    return "\n".join([text, *hints])


def public_url(url: str) -> str:
    """The URL without any credentials or query, which are never worth printing."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else url.split("?")[0]


def describe_config_error(exc: Exception) -> str:
    """The problem and the variable, never the offending value (it may be a secret)."""
    if isinstance(exc, ValidationError):
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error.get("loc", ())).upper()
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return "; ".join(problems)
    return str(exc)
