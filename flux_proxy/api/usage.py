"""`GET /v1/usage` (usage rows per key, account, model and/or day) and `GET /v1/usage/quota`
(the calling key's limits and what is left today). Both are this proxy's extensions; OpenAI's
own usage API has another shape and needs an organisation admin key.

Admin keys see every key's rows; a user key sees only its own. Rows exist only where something
happened (charts fill missing days with zero). `images` are images made upstream;
`cache_hits` images served from the seeded cache, which saved `neurons_saved` neurons.
"""

from __future__ import annotations

import datetime
import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flux_proxy.api import openapi
from flux_proxy.api.caller import caller_of
from flux_proxy.api.render import json_response
from flux_proxy.clock import utc_day
from flux_proxy.errors import invalid
from flux_proxy.store.base import USAGE_COUNTERS, UsageRow

DIMENSIONS = ("key", "account", "model", "day")
DEFAULT_DAYS = 14
DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


def _date(request: Request, name: str, default: datetime.date) -> datetime.date:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        if not DATE.match(text):  # fromisoformat also takes 20261203 and 2026-W49-4
            raise ValueError(text)
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise invalid(f"`{name}` must be a date as YYYY-MM-DD", param=name) from None


def _days_before(day: datetime.date, days: int) -> datetime.date:
    try:
        return day - datetime.timedelta(days=days)
    except OverflowError:  # before year 1: nothing is that old
        return datetime.date.min


def _group_by(request: Request) -> list[str]:
    text = request.query_params.get("group_by") or "day"
    dimensions = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [d for d in dimensions if d not in DIMENSIONS]
    if not dimensions or unknown or len(set(dimensions)) != len(dimensions):
        raise invalid(
            "`group_by` must be one or more of key, account, model, day, separated by commas",
            param="group_by",
        )
    return dimensions


def _label(row: UsageRow, dimension: str) -> str | int | None:
    if dimension == "account":
        return int(row.account) if row.account else None
    return getattr(row, dimension)


def group_rows(rows: list[UsageRow], dimensions: list[str]) -> list[dict]:
    groups: dict[tuple, dict] = {}
    for row in rows:
        labels = tuple(_label(row, d) for d in dimensions)
        if labels not in groups:
            groups[labels] = dict(zip(dimensions, labels, strict=True))
            groups[labels].update(dict.fromkeys(USAGE_COUNTERS, 0))
        entry = groups[labels]
        for counter in USAGE_COUNTERS:
            entry[counter] += getattr(row, counter)
    ordered = sorted(groups.items(), key=lambda item: tuple(_sortable(v) for v in item[0]))
    return [_rounded(entry) for _, entry in ordered]


def _sortable(value: object) -> tuple[int, str]:
    # Unattributed rows (no account: cache hits, failed requests) sort last; numbers by value.
    if value is None:
        return (2, "")
    if isinstance(value, int):
        return (0, f"{value:012d}")
    return (1, str(value))


def _rounded(entry: dict) -> dict:
    for counter in ("neurons", "neurons_saved"):
        entry[counter] = round(float(entry[counter]), 2)
    return entry


async def usage(request: Request) -> Response:
    svc = request.app.state.services
    caller = caller_of(request.scope)
    today = datetime.date.fromisoformat(utc_day(svc.clock.now()))
    end = _date(request, "end", today)
    start = _date(request, "start", _days_before(end, DEFAULT_DAYS - 1))
    if start > end:
        raise invalid("`start` must not be after `end`", param="start")
    dimensions = _group_by(request)
    oldest = _days_before(today, svc.settings.usage_history_days)
    start = max(start, oldest)  # older rows are not kept
    end = min(end, today)  # nor are there any yet for days to come
    wanted = request.query_params.get("key") if caller.is_admin else caller.name
    rows = (
        await svc.store.usage_rows(start.isoformat(), end.isoformat(), wanted or None)
        if start <= end
        else []
    )
    data = group_rows(rows, dimensions)
    totals = _rounded({c: sum(getattr(r, c) for r in rows) for c in USAGE_COUNTERS})
    return json_response(
        {
            "object": "usage",
            "start": start.isoformat(),
            "end": end.isoformat(),
            "group_by": dimensions,
            "scope": "all" if caller.is_admin and not wanted else "key",
            "key": wanted or None,
            "history_days": svc.settings.usage_history_days,
            "data": data,
            "totals": totals,
        }
    )


async def quota(request: Request) -> Response:
    svc = request.app.state.services
    return json_response(await svc.quota.today(caller_of(request.scope)))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/usage", usage, methods=["GET"]),
        Route("/v1/usage/quota", quota, methods=["GET"]),
    ]


# --- /openapi.json ---------------------------------------------------------------------------

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_DATE = {"type": "string", "format": "date"}
_DIMENSION = "(key|account|model|day)"

_ROW = openapi.add_schema(
    "UsageRow",
    {
        "type": "object",
        "description": "One group's figures; only the group_by dimensions appear.",
        "required": list(USAGE_COUNTERS),
        "properties": {
            "key": {"type": "string", "description": "The key's name."},
            "account": {
                "type": ["integer", "null"],
                "description": "Account number; null: none served (cache hit, failure).",
            },
            "model": {"type": "string"},
            "day": _DATE,
            "images": {"type": "integer", "description": "Made upstream."},
            "neurons": {"type": "number"},
            "requests": {"type": "integer"},
            "cache_hits": {"type": "integer", "description": "Served from the seeded cache."},
            "neurons_saved": {"type": "number"},
        },
    },
)
_USAGE = openapi.add_schema(
    "Usage",
    {
        "type": "object",
        "required": ["object", "start", "end", "group_by", "scope", "data", "totals"],
        "properties": {
            "object": {"const": "usage"},
            "start": _DATE,
            "end": _DATE,
            "group_by": {"type": "array", "items": {"enum": list(DIMENSIONS)}},
            "scope": {"enum": ["all", "key"]},
            "key": {"type": ["string", "null"]},
            "history_days": {"type": "integer"},
            "data": {"type": "array", "items": _ROW},
            "totals": _ROW,
        },
    },
)
_QUOTA = openapi.add_schema(
    "UsageQuota",
    {
        "type": "object",
        "required": ["object", "key", "role", "day", "next_reset"],
        "properties": {
            "object": {"const": "usage.quota"},
            "key": {"type": "string"},
            "role": {"enum": ["admin", "user"]},
            "day": _DATE,
            "daily_images": {"type": ["integer", "null"]},
            "daily_neurons": _NULLABLE_NUMBER,
            "models": {"type": ["array", "null"], "items": {"type": "string"}},
            "images_used": {"type": "integer"},
            "neurons_used": {"type": "number"},
            "images_reserved": {"type": "integer"},
            "neurons_reserved": {"type": "number"},
            "images_remaining": {"type": ["integer", "null"]},
            "neurons_remaining": _NULLABLE_NUMBER,
            "next_reset": {"type": "string"},
        },
    },
)
_usage_operation = openapi.operation(
    "usage",
    "Usage rows by key, account, model and/or day (a proxy extension)",
    ok=openapi.json_ok("Usage rows; a user key sees its own only.", _USAGE),
)
_usage_operation["parameters"] = [
    {"name": "start", "in": "query", "schema": _DATE, "description": "Default: end - 13 days."},
    {"name": "end", "in": "query", "schema": _DATE, "description": "Default: today (UTC)."},
    {
        "name": "group_by",
        "in": "query",
        "schema": {"type": "string", "pattern": f"^{_DIMENSION}(,{_DIMENSION})*$"},
        "description": "One or more of key, account, model, day, comma-separated.",
    },
    {
        "name": "key",
        "in": "query",
        "schema": {"type": "string"},
        "description": "Admin keys: one key's rows only. User keys always see their own.",
    },
]
openapi.add_operation("/v1/usage", "get", _usage_operation)
openapi.add_operation(
    "/v1/usage/quota",
    "get",
    openapi.operation(
        "usageQuota",
        "The calling key's limits and what is left today (a proxy extension)",
        ok=openapi.json_ok("The calling key's quota today.", _QUOTA),
        errors_=("401",),
    ),
)
