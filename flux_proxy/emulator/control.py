"""Control endpoints under `/__emulator/`: never part of Cloudflare's API, only for tests and demos.

They set faults, usage and latency, and show the call log. They never show a token.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from flux_proxy.clock import iso, utc_day
from flux_proxy.emulator.faults import parse_rule
from flux_proxy.emulator.state import EMULATOR

PREFIX = "/__emulator"


def add_control_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(PREFIX + "/faults", list_faults)
    router.add_post(PREFIX + "/faults", add_fault)
    router.add_delete(PREFIX + "/faults", clear_faults)
    router.add_post(PREFIX + "/reset", reset)
    router.add_get(PREFIX + "/calls", calls)
    router.add_get(PREFIX + "/usage", usage)
    router.add_post(PREFIX + "/usage", set_usage)
    router.add_get(PREFIX + "/config", config)
    router.add_post(PREFIX + "/config", set_config)


def _problem(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be JSON"}), content_type="application/json"
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be a JSON object"}),
            content_type="application/json",
        )
    return data


async def list_faults(request: web.Request) -> web.Response:
    rules = request.app[EMULATOR].faults.rules()
    return web.json_response({"faults": [rule.describe() for rule in rules]})


async def add_fault(request: web.Request) -> web.Response:
    try:
        rule = parse_rule(await _json_object(request))
    except ValueError as error:
        return _problem(str(error))
    request.app[EMULATOR].faults.add(rule)
    return web.json_response({"fault": rule.describe()}, status=201)


async def clear_faults(request: web.Request) -> web.Response:
    request.app[EMULATOR].faults.clear()
    return web.json_response({"faults": []})


async def reset(request: web.Request) -> web.Response:
    request.app[EMULATOR].reset()
    return web.json_response({"reset": True})


async def calls(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    return web.json_response({"calls": list(emulator.calls), "token_checks": emulator.token_checks})


async def usage(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    ledger = emulator.ledger
    accounts = {}
    for account in emulator.accounts:
        used = ledger.used(account)
        allocation = ledger.allocation(account)
        accounts[account] = {
            "neurons_used": round(used, 2),
            "daily_neurons": allocation,
            "remaining": None if allocation is None else round(max(0.0, allocation - used), 2),
        }
    return web.json_response(
        {
            "day": utc_day(emulator.clock.now()),
            "next_reset": iso(ledger.next_reset()),
            "accounts": accounts,
        }
    )


async def set_usage(request: web.Request) -> web.Response:
    """`{"account": id, "neurons": 9000}` sets today's use; `daily_neurons` sets its allocation."""
    data = await _json_object(request)
    emulator = request.app[EMULATOR]
    account = data.get("account")
    if account not in emulator.accounts:
        return _problem("account must be the id of one of the emulator's accounts")
    neurons, allocation = data.get("neurons"), data.get("daily_neurons")
    for name, value in (("neurons", neurons), ("daily_neurons", allocation)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            return _problem(f"{name} must be a non-negative number")
    if neurons is not None:
        emulator.ledger.set_used(account, neurons)
    if "daily_neurons" in data:
        emulator.ledger.overrides[account] = allocation
    return await usage(request)


async def config(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    return web.json_response(
        {
            "latency": emulator.latency,
            "daily_neurons": emulator.ledger.daily_neurons,
            "rate_limit_per_minute": emulator.limiter.per_minute,
        }
    )


async def set_config(request: web.Request) -> web.Response:
    """`{"latency": 0.2}` adds seconds to every call; `daily_neurons` and
    `rate_limit_per_minute` change those limits for every account."""
    data = await _json_object(request)
    emulator = request.app[EMULATOR]
    unknown = sorted(set(data) - {"latency", "daily_neurons", "rate_limit_per_minute"})
    if unknown:
        return _problem(f"unknown settings: {', '.join(unknown)}")
    for name, value in data.items():
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value < 0
        ):
            return _problem(f"{name} must be a non-negative number")
    if "latency" in data:
        emulator.latency = float(data["latency"] or 0.0)
    if "daily_neurons" in data:
        emulator.ledger.daily_neurons = data["daily_neurons"]
    if "rate_limit_per_minute" in data:
        emulator.limiter.per_minute = int(data["rate_limit_per_minute"] or 0)
    return await config(request)
