"""Batches: OpenAI's Batch API over the account pool. This module holds what a batch *is*:
its input validated up front, its document (the OpenAI batch object plus what the runner
needs), and the estimates of cost and completion. `batch_runner.py` works the lines.

A batch is a document of kind `batch` in the state store; its lines are the store's batch
lines (see `StateStore.add_lines`). Statuses follow OpenAI: `validating` (only while the
POST is checking the file), `failed` (a bad line: nothing was queued, nothing spent),
`in_progress`, `finalizing` → `completed`, `expired`, `cancelling` → `cancelled`.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from flux_proxy.api.body import RawRequest, UploadedFile
from flux_proxy.api.caller import Caller
from flux_proxy.api.parse import ImageRequest, build_image_request
from flux_proxy.clock import Clock, next_utc_midnight, utc_day
from flux_proxy.errors import ApiError, invalid
from flux_proxy.keys.quota import model_not_allowed
from flux_proxy.models import find_model
from flux_proxy.pool import account_key, token_key
from flux_proxy.settings import Settings
from flux_proxy.work.files import IMAGE_PURPOSES, FileStore

BATCH_KIND = "batch"
# One small document per batch that still has work (in_progress, cancelling, finalizing), so a
# runner's look at the batches costs what is active, not every batch ever made.
ACTIVE_KIND = "batch-active"
ENDPOINTS = {"/v1/images/generations": False, "/v1/images/edits": True}  # -> is an edit
ACTIVE = ("in_progress", "cancelling", "finalizing")
_WINDOW = re.compile(r"^\s*(\d{1,4})\s*([hd])\s*$")
MAX_WINDOW = 30 * 86400
MAX_REPORTED_ERRORS = 1000
# Fields of the stored document that are the proxy's own, never shown.
_INTERNAL = (
    "owner",
    "base_url",
    "line_neurons",
    "typical_seconds",
    "finalizer_until",
    "sort_key",
)


def window_seconds(value: Any) -> int:
    """`24h` as OpenAI has it, and longer windows (`48h`, `72h`, `7d`, ... up to `30d`)."""
    match = _WINDOW.match(value) if isinstance(value, str) else None
    seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 86400) if match else 0
    if not 86400 <= seconds <= MAX_WINDOW:
        raise invalid(
            "completion_window must be '24h', or a longer window such as '48h', '72h' or '7d' "
            "(at most 30d)",
            param="completion_window",
        )
    return seconds


# --- lines ------------------------------------------------------------------------------------


async def line_request(
    body: Any, settings: Settings, *, edit: bool, files: FileStore, owner: Caller
) -> ImageRequest:
    """A line's `body` → the ImageRequest the live endpoint would have built from it.

    Edits lines carry their images as `data:` URLs in `images` (like the JSON edits body) or
    as ids of uploaded files (`purpose` vision or user_data) in `image_file_ids`.
    """
    if not isinstance(body, dict):
        raise invalid("body must be a JSON object", param="body")
    fields = dict(body)
    if fields.get("stream"):
        raise invalid("batch lines cannot stream; leave out stream", param="stream")
    uploads: list[UploadedFile] = []
    file_ids = fields.pop("image_file_ids", None)
    if file_ids is not None:
        if not isinstance(file_ids, list) or not all(isinstance(i, str) for i in file_ids):
            raise invalid("image_file_ids must be a list of file ids", param="image_file_ids")
        for file_id in file_ids:
            try:
                data, doc = await files.content(file_id, owner)
            except ApiError:
                raise invalid(
                    f"no such file {file_id[:80]!r}", param="image_file_ids", code="file_not_found"
                ) from None
            if doc["purpose"] not in IMAGE_PURPOSES:
                raise invalid(
                    f"file {file_id[:80]} has purpose {doc['purpose']!r}; reference images "
                    "are uploaded with purpose 'vision' or 'user_data'",
                    param="image_file_ids",
                )
            uploads.append(UploadedFile("image[]", doc["filename"], doc["content_type"], data))
    return await build_image_request(RawRequest(fields, uploads), settings, edit=edit)


@dataclass
class CheckedInput:
    payloads: list[str]  # each line's JSON text, in order
    errors: list[dict]  # OpenAI's errors.data[]: code, message, param, line (from 1)
    neurons: list[float]  # each line's estimated price (all of its n images)
    typical_seconds: float


async def check_input(
    data: bytes, endpoint: str, settings: Settings, files: FileStore, owner: Caller
) -> CheckedInput:
    """Every line, checked as the live endpoint would check it, before anything is queued."""
    edit = ENDPOINTS[endpoint]
    checked = CheckedInput([], [], [], 0.0)
    seen: set[str] = set()
    lines = [line for line in data.decode("utf-8").splitlines()]
    if len([line for line in lines if line.strip()]) > settings.batch_max_lines:
        checked.errors.append(
            _error(None, "too_many_lines", f"at most {settings.batch_max_lines} lines", None)
        )
        return checked
    seconds = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            request = await _check_line(text, number, endpoint, edit, seen, settings, files, owner)
        except ApiError as error:
            if len(checked.errors) < MAX_REPORTED_ERRORS:
                checked.errors.append(
                    _error(number, error.code or "invalid_request", error.message, error.param)
                )
            continue
        checked.payloads.append(text)
        checked.neurons.append(max(request.job.estimated_neurons(), 1.0) * request.n)
        seconds.append(request.job.model.typical_seconds)
    if not checked.payloads and not checked.errors:
        checked.errors.append(_error(None, "empty_file", "the input file has no lines", None))
    checked.typical_seconds = sum(seconds) / len(seconds) if seconds else 0.0
    return checked


async def _check_line(
    text: str,
    number: int,
    endpoint: str,
    edit: bool,
    seen: set[str],
    settings: Settings,
    files: FileStore,
    owner: Caller,
) -> ImageRequest:
    try:
        line = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid("the line is not valid JSON", param=None, code="invalid_json") from None
    if not isinstance(line, dict):
        raise invalid("each line must be a JSON object", param=None, code="invalid_json")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise invalid("custom_id must be a non-empty string", param="custom_id")
    if custom_id in seen:
        raise invalid(
            f"custom_id {custom_id[:80]!r} appears more than once",
            param="custom_id",
            code="duplicate_custom_id",
        )
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise invalid("method must be 'POST'", param="method")
    if line.get("url") != endpoint:
        raise invalid(f"url must be the batch's endpoint, {endpoint}", param="url")
    request = await line_request(line.get("body"), settings, edit=edit, files=files, owner=owner)
    if not owner.may_use(request.job.model.id):  # refused now, not one line at a time later
        raise model_not_allowed(owner, request.job.model)
    return request


def _error(line: int | None, code: str, message: str, param: str | None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


# --- the document -----------------------------------------------------------------------------


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def output_file_ids(batch_id: str) -> tuple[str, str]:
    """The output and error files' ids, fixed by the batch: assembling twice overwrites."""
    suffix = batch_id.removeprefix("batch_")
    return f"file-out-{suffix}", f"file-err-{suffix}"


def public_batch(doc: dict, counts: dict | None = None) -> dict:
    """OpenAI's batch object (plus the documented extensions) from the stored document."""
    body = {key: value for key, value in doc.items() if key not in _INTERNAL}
    if counts is not None:
        body["request_counts"] = request_counts(doc["request_counts"]["total"], counts)
        body["neurons_used"] = round(counts["neurons"], 2)
    return body


def request_counts(total: int, counts: dict) -> dict:
    return {
        "total": total,
        "completed": counts["completed"],
        "failed": counts["failed"],
        # Extensions: lines that ran out of time or were cancelled before they ran.
        "expired": counts["expired"],
        "cancelled": counts["cancelled"],
    }


def finished_lines(counts: dict) -> int:
    return counts["completed"] + counts["failed"] + counts["expired"] + counts["cancelled"]


# --- capacity and estimates -------------------------------------------------------------------


@dataclass(frozen=True)
class AccountRoom:
    """What one account can give batches: neurons left today and per day (None: no limit)."""

    number: int
    today: float | None
    per_day: float | None
    usable_now: bool  # not blocked at this moment


def budget_reserve(settings: Settings) -> float:
    """Neurons of each account's day that batches leave for live requests."""
    if settings.batch_budget_reserve is not None:
        return settings.batch_budget_reserve
    model = find_model(settings.default_model, settings.model_aliases)
    return model.estimate_neurons(None, None, None) if model is not None else 0.0


async def account_rooms(
    pool: Any, store: Any, settings: Settings, clock: Clock
) -> list[AccountRoom]:
    """Each account's room for batch lines, read from the store (never from Cloudflare)."""
    now = clock.now()
    accounts = list(pool.accounts)
    plain = [account_key(a) for a in accounts]
    tokens = [token_key(a) for a in accounts]
    blocks = await store.get_blocks(plain + tokens)
    usage = await store.usage(plain, utc_day(now))
    reserve = budget_reserve(settings)
    rooms = []
    for account, key, token in zip(accounts, plain, tokens, strict=True):
        if (block := blocks.get(token)) is not None and block.active(now):
            continue  # a rejected token: no room on any day until the operator fixes it
        block = blocks.get(key)
        if block is not None and block.kind == "disabled" and block.active(now):
            continue
        budget = settings.budget_for(account)
        blocked = block is not None and block.active(now)
        if budget is None:
            rooms.append(AccountRoom(account.number, None, None, not blocked))
            continue
        per_day = max(0.0, budget - reserve)
        today = max(0.0, per_day - usage[key].used - usage[key].reserved)
        if blocked and block.kind == "parked":
            today = 0.0
        rooms.append(AccountRoom(account.number, today, per_day, not blocked))
    return rooms


def batch_slots(settings: Settings) -> int:
    """Slots per account batch lines may hold at once (on one replica)."""
    return max(1, math.floor(settings.account_concurrency * settings.batch_slot_share))


def estimate_completion(
    line_neurons: float,
    lines: int,
    typical_seconds: float,
    rooms: list[AccountRoom],
    settings: Settings,
    now: float,
) -> tuple[float | None, int | None]:
    """(estimated_completion_at, estimated_days) for `lines` lines of about `line_neurons`
    each, at the accounts' budgets as they stand: today's remainder first, then whole days
    from 00:00 UTC. estimated_days counts the UTC days lines run on, today included. (None,
    None) when no account could ever cover a line."""
    if lines <= 0:
        return now, 0
    parallel = max(1, len(rooms) * batch_slots(settings))
    run_time = math.ceil(lines / parallel) * typical_seconds
    if any(room.per_day is None for room in rooms):
        return now + run_time, 1
    cost = max(line_neurons, 1.0)
    today = sum(math.floor(room.today / cost) for room in rooms if room.today is not None)
    per_day = sum(math.floor(room.per_day / cost) for room in rooms if room.per_day is not None)
    if lines <= today:
        return now + run_time, 1
    if per_day == 0:
        return None, None
    left = lines - today
    extra_days = math.ceil(left / per_day)
    last_day_lines = left - (extra_days - 1) * per_day
    finish = (
        next_utc_midnight(now)
        + (extra_days - 1) * 86400
        + math.ceil(last_day_lines / parallel) * typical_seconds
    )
    return finish, extra_days + (1 if today > 0 else 0)


async def estimate(
    bodies: list[Any],
    endpoint: str,
    *,
    settings: Settings,
    files: FileStore,
    owner: Caller,
    pool: Any,
    store: Any,
    clock: Clock,
) -> dict:
    """The page's estimate before submitting: the same checks and sums as a batch's own."""
    if endpoint not in ENDPOINTS:
        raise unsupported_endpoint(endpoint)
    if not isinstance(bodies, list) or not bodies:
        raise invalid("bodies must be a non-empty list of request bodies", param="bodies")
    if len(bodies) > settings.batch_max_lines:
        raise invalid(f"at most {settings.batch_max_lines} bodies", param="bodies")
    neurons, seconds = [], []
    for index, body in enumerate(bodies):
        try:
            request = await line_request(
                body, settings, edit=ENDPOINTS[endpoint], files=files, owner=owner
            )
        except ApiError as error:
            error.param = f"bodies[{index}].{error.param}" if error.param else f"bodies[{index}]"
            raise
        neurons.append(max(request.job.estimated_neurons(), 1.0) * request.n)
        seconds.append(request.job.model.typical_seconds)
    rooms = await account_rooms(pool, store, settings, clock)
    total = sum(neurons)
    at, days = estimate_completion(
        total / len(neurons),
        len(neurons),
        sum(seconds) / len(seconds),
        rooms,
        settings,
        clock.now(),
    )
    return {
        "object": "batch.estimate",
        "endpoint": endpoint,
        "lines": len(neurons),
        "estimated_neurons": round(total, 2),
        "estimated_completion_at": None if at is None else int(at),
        "estimated_days": days,
    }


def unsupported_endpoint(endpoint: Any) -> ApiError:
    return invalid(
        f"endpoint {str(endpoint)[:80]!r} is not served here; batches run "
        "/v1/images/generations or /v1/images/edits",
        param="endpoint",
        code="unsupported_endpoint",
    )
