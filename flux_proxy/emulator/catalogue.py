"""The free catalogue endpoints, generated from the model table, and a control to make them
drift from it (for testing `flux-proxy models --check`).

    GET /client/v4/accounts/{id}/ai/models/search?task=Text-to-Image  (search=, author=, page=,
                                                                       per_page=)
    GET /client/v4/accounts/{id}/ai/models/schema?model=@cf/...
    GET|POST|DELETE /__emulator/catalogue     the injected drift (not part of Cloudflare's API)

Drift changes only what these endpoints say; `/ai/run` keeps serving the table's models.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from flux_proxy.emulator.envelope import CloudflareError, envelope_response, success_body
from flux_proxy.emulator.state import EMULATOR, bearer_token
from flux_proxy.models import MODELS
from flux_proxy.upstream.catalogue import TASK, model_schema, search_entry

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
_CONTROL = "/__emulator/catalogue"


@dataclass
class CatalogueDrift:
    """How the emulator's catalogue differs from the model table, as a test asked."""

    removed: set[str] = field(default_factory=set)
    added: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> schema
    # (model, parameter) -> the parameter's new declaration, or None: the parameter is gone
    changed: dict[tuple[str, str], dict[str, Any] | None] = field(default_factory=dict)

    def clear(self) -> None:
        self.removed.clear()
        self.added.clear()
        self.changed.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "removed": sorted(self.removed),
            "added": sorted(self.added),
            "changed": [
                {"model": model, "parameter": parameter, "now": declared}
                for (model, parameter), declared in sorted(self.changed.items())
            ],
        }

    def entries(self) -> list[dict[str, Any]]:
        listed = [search_entry(spec) for spec in MODELS if spec.id not in self.removed]
        for name in self.added:
            listed.append(
                {
                    "id": f"emulated-{name}",
                    "source": 1,
                    "name": name,
                    "description": "A model the emulator's catalogue lists but the table lacks.",
                    "task": dict(TASK),
                    "tags": [],
                    "properties": [],
                }
            )
        return listed

    def schema(self, name: str) -> dict[str, Any] | None:
        if name in self.added:
            return copy.deepcopy(self.added[name])
        spec = next((s for s in MODELS if s.id == name), None)
        if spec is None or name in self.removed:
            return None
        schema = model_schema(spec)
        properties = schema["input"]["properties"]
        for (model, parameter), declared in self.changed.items():
            if model != name:
                continue
            if declared is None:
                properties.pop(parameter, None)
            else:
                properties[parameter] = {**properties.get(parameter, {}), **declared}
        return schema


CATALOGUE = web.AppKey("flux_proxy_emulator_catalogue", CatalogueDrift)


def add_catalogue_routes(app: web.Application, api_prefix: str) -> None:
    app[CATALOGUE] = CatalogueDrift()
    base = api_prefix + "/accounts/{account_id}/ai/models"
    app.router.add_get(base + "/search", search)
    app.router.add_get(base + "/schema", schema)
    app.router.add_get(_CONTROL, show_drift)
    app.router.add_post(_CONTROL, add_drift)
    app.router.add_delete(_CONTROL, clear_drift)
    # `/__emulator/reset` clears everything the emulator remembers, this drift included.
    app[EMULATOR].on_reset.append(app[CATALOGUE].clear)


def _authorised(request: web.Request) -> None:
    emulator = request.app[EMULATOR]
    if not emulator.token_matches(request.match_info["account_id"], bearer_token(request)):
        raise CloudflareError(401, 10000, "Authentication error")


async def search(request: web.Request) -> web.Response:
    _authorised(request)
    query = request.query
    listed = request.app[CATALOGUE].entries()
    if task := query.get("task"):
        listed = [e for e in listed if e["task"]["name"].lower() == task.lower()]
    if author := query.get("author"):
        listed = [e for e in listed if e["name"].split("/")[1:2] == [author]]
    if text := query.get("search"):
        text = text.lower()
        listed = [e for e in listed if text in e["name"].lower() or text in e["description"]]
    page = _positive(query.get("page"), 1, "page")
    per_page = min(_positive(query.get("per_page"), DEFAULT_PER_PAGE, "per_page"), MAX_PER_PAGE)
    shown = listed[(page - 1) * per_page : page * per_page]
    body = success_body({})
    body["result"] = shown
    body["result_info"] = {
        "page": page,
        "per_page": per_page,
        "count": len(shown),
        "total_count": len(listed),
        "total_pages": max(1, math.ceil(len(listed) / per_page)),
    }
    return envelope_response(body)


async def schema(request: web.Request) -> web.Response:
    _authorised(request)
    name = request.query.get("model", "")
    found = request.app[CATALOGUE].schema(name)
    if found is None:
        raise CloudflareError(400, 5007, f"No such model {name} or task")
    return envelope_response(success_body(found))


def _positive(value: str | None, default: int, name: str) -> int:
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise CloudflareError(400, 7003, f"{name} must be a positive integer")
    return int(value)


# --- control -----------------------------------------------------------------------------


async def show_drift(request: web.Request) -> web.Response:
    return web.json_response(request.app[CATALOGUE].describe())


async def add_drift(request: web.Request) -> web.Response:
    """`{"remove": [id, ...], "add": [{"name": "@cf/...", "schema": {...}?}, ...],
    "change": [{"model": id, "parameter": "num_steps", "set": {"maximum": 30}}, or
    "remove": true to drop the parameter]}`; every key is optional and adds to what is there."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _problem("the body must be JSON")
    if not isinstance(data, dict) or set(data) - {"remove", "add", "change"}:
        return _problem("the body is an object with remove, add and change")
    drift = request.app[CATALOGUE]
    removed = data.get("remove", [])
    if not isinstance(removed, list) or not all(isinstance(n, str) for n in removed):
        return _problem("remove is a list of model ids")
    added = data.get("add", [])
    if not isinstance(added, list) or not all(
        isinstance(a, dict) and isinstance(a.get("name"), str) for a in added
    ):
        return _problem("add is a list of {name, schema?}")
    changes = data.get("change", [])
    if not isinstance(changes, list) or not all(_is_change(c) for c in changes):
        return _problem("change is a list of {model, parameter, set: {...}} or {..., remove: true}")
    drift.removed.update(removed)
    for entry in added:
        default = {"input": {"type": "object", "properties": {}}, "output": {}}
        drift.added[entry["name"]] = entry.get("schema") or default
    for change in changes:
        key = (change["model"], change["parameter"])
        drift.changed[key] = None if change.get("remove") else change["set"]
    return web.json_response(drift.describe(), status=201)


async def clear_drift(request: web.Request) -> web.Response:
    request.app[CATALOGUE].clear()
    return web.json_response(request.app[CATALOGUE].describe())


def _is_change(change: Any) -> bool:
    return (
        isinstance(change, dict)
        and isinstance(change.get("model"), str)
        and isinstance(change.get("parameter"), str)
        and (change.get("remove") is True or isinstance(change.get("set"), dict))
    )


def _problem(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
