"""What batches can count on: each account's room for batch lines (budgets less the live
reserve, blocks), the slots they may hold, the estimates of cost and completion shown on the
batch object and before submitting, and the lines no account could ever pay for. Read from
the state store, never from Cloudflare."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flux_proxy.api.caller import Caller
from flux_proxy.clock import Clock, next_utc_midnight, utc_day
from flux_proxy.errors import ApiError, invalid
from flux_proxy.models import find_model
from flux_proxy.pool import account_key, token_key
from flux_proxy.settings import Settings
from flux_proxy.work.batches import (
    ENDPOINTS,
    MAX_REPORTED_ERRORS,
    CheckedInput,
    error_entry,
    line_owner,
    line_request,
    unsupported_endpoint,
)
from flux_proxy.work.files import FileStore


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
    pool: Any, store: Any, settings: Settings, clock: Clock, *, held: bool = True
) -> list[AccountRoom]:
    """Each account's room for batch lines, read from the store (never from Cloudflare).

    `held=False` leaves out the neurons held for calls in flight: an estimate counts a
    running line among the lines left, and must not count it a second time as spent."""
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
        today = max(0.0, per_day - usage[key].used - (usage[key].reserved if held else 0.0))
        if blocked and block.kind == "parked":
            today = 0.0
        rooms.append(AccountRoom(account.number, today, per_day, not blocked))
    return rooms


def batch_slots(settings: Settings) -> int:
    """Slots per account batch lines may hold at once (on one replica)."""
    return max(1, math.floor(settings.account_concurrency * settings.batch_slot_share))


async def key_lines(
    store: Any, owner: Caller | None, now: float, line_images: float, line_neurons: float
) -> tuple[int | None, int | None]:
    """(today, per day): how many lines of about `line_images` images and `line_neurons`
    neurons the owner's daily_images/daily_neurons let run, left today and on a whole day.
    (None, None) for a key without limits. A batch runs no faster than its key's quota."""
    if owner is None or not owner.limited:
        return None, None
    seen = await store.key_usage(owner.name, utc_day(now))
    today, per_day = math.inf, math.inf
    if owner.daily_images is not None:
        images = max(line_images, 1.0)
        left = owner.daily_images - seen.images - seen.reserved_images
        today = min(today, math.floor(max(0, left) / images))
        per_day = min(per_day, math.floor(owner.daily_images / images))
    if owner.daily_neurons is not None:
        neurons = max(line_neurons, 1.0)
        left = owner.daily_neurons - seen.neurons - seen.reserved_neurons
        today = min(today, math.floor(max(0.0, left) / neurons))
        per_day = min(per_day, math.floor(owner.daily_neurons / neurons))
    return int(today), int(per_day)


def estimate_completion(
    line_neurons: float,
    lines: int,
    typical_seconds: float,
    rooms: list[AccountRoom],
    settings: Settings,
    now: float,
    key_room: tuple[int | None, int | None] = (None, None),
) -> tuple[float | None, int | None]:
    """(estimated_completion_at, estimated_days) for `lines` lines of about `line_neurons`
    each, at the accounts' budgets as they stand and within the owner's quota (`key_lines`):
    today's remainder first, then whole days from 00:00 UTC. estimated_days counts the UTC
    days lines run on, today included. (None, None) when no line could ever run."""
    if lines <= 0:
        return now, 0
    parallel = max(1, len(rooms) * batch_slots(settings))
    run_time = math.ceil(lines / parallel) * typical_seconds
    key_today, key_per_day = key_room
    if any(room.per_day is None for room in rooms):
        if key_per_day is None:
            return now + run_time, 1
        today = per_day = math.inf
    else:
        cost = max(line_neurons, 1.0)
        today = sum(math.floor(room.today / cost) for room in rooms if room.today is not None)
        per_day = sum(math.floor(room.per_day / cost) for room in rooms if room.per_day is not None)
    if key_per_day is not None and key_today is not None:
        today, per_day = min(today, key_today), min(per_day, key_per_day)
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
    neurons, seconds, images = [], [], []
    for index, body in enumerate(bodies):
        try:
            request = await line_request(
                body, settings, edit=ENDPOINTS[endpoint], files=files, owner=line_owner(owner)
            )
        except ApiError as error:
            error.param = f"bodies[{index}].{error.param}" if error.param else f"bodies[{index}]"
            raise
        neurons.append(max(request.job.estimated_neurons(), 1.0) * request.n)
        seconds.append(request.job.model.typical_seconds)
        images.append(request.n)
    rooms = await account_rooms(pool, store, settings, clock, held=False)
    total = sum(neurons)
    line_neurons = total / len(neurons)
    at, days = estimate_completion(
        line_neurons,
        len(neurons),
        sum(seconds) / len(seconds),
        rooms,
        settings,
        clock.now(),
        await key_lines(store, owner, clock.now(), sum(images) / len(images), line_neurons),
    )
    return {
        "object": "batch.estimate",
        "endpoint": endpoint,
        "lines": len(neurons),
        "estimated_neurons": round(total, 2),
        "estimated_completion_at": None if at is None else int(at),
        "estimated_days": days,
    }


def beyond_any_day(checked: CheckedInput, rooms: list[AccountRoom]) -> list[dict]:
    """Lines no account could ever run: dearer than the most any account gives batches in a
    day (its budget less the live reserve). Queued, such a line would wait at the head of the
    batch until it expired. Nothing to say when an account has no budget, or none is known."""
    days = [room.per_day for room in rooms]
    if not days or None in days:
        return []
    most = max(day for day in days if day is not None)
    return [
        error_entry(
            number,
            "exceeds_daily_budget",
            f"this line costs about {cost:,.0f} neurons, more than any account gives batches "
            f"in a day ({most:,.0f}: its budget less BATCH_BUDGET_RESERVE); ask for fewer or "
            "smaller images",
            "body",
        )
        for number, cost in zip(checked.numbers, checked.neurons, strict=True)
        if cost > most
    ][:MAX_REPORTED_ERRORS]
