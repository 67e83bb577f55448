"""`GET /v1/usage` (usage rows per key, account, model and/or day) and `GET /v1/usage/quota`
(the calling key's limits and what is left today). Both are this proxy's extensions; OpenAI's
own usage API has another shape and needs an organisation admin key.

Admin keys see every key's rows; a user key sees only its own. Rows exist only where something
happened (charts fill missing days with zero). `images` are images made upstream;
`cache_hits` images served from the seeded cache, which saved `neurons_saved` neurons.
"""

from __future__ import annotations

import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flux_proxy.api.caller import caller_of
from flux_proxy.api.render import json_response
from flux_proxy.clock import utc_day
from flux_proxy.errors import invalid
from flux_proxy.store.base import USAGE_COUNTERS, UsageRow

DIMENSIONS = ("key", "account", "model", "day")
DEFAULT_DAYS = 14


def _date(request: Request, name: str, default: datetime.date) -> datetime.date:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise invalid(f"`{name}` must be a date as YYYY-MM-DD", param=name) from None


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
    start = _date(request, "start", end - datetime.timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        raise invalid("`start` must not be after `end`", param="start")
    dimensions = _group_by(request)
    oldest = today - datetime.timedelta(days=svc.settings.usage_history_days)
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
