"""Per-key daily quotas and usage rows: one place every image path goes through.

The work layer (`ImageWork._make`, `flux_proxy/work/produce.py`) calls
`KeyQuota.reserve(caller, image_request)` before any upstream call, for new work only (a
replayed result costs nothing). It refuses a model the key may not use (403
`model_not_allowed`) and holds the request's images and estimated neurons against the key's
`daily_images` / `daily_neurons` in the state store, atomically and across replicas (429
`key_quota_exceeded` when they do not fit), exactly like the pool holds account budgets. The
`QuotaHold` it returns is settled with what was made (`settle(made)`: images made upstream at
their real neurons, cache hits as `cache_hits`) or released when nothing was. Keys without
limits are held too (an unlimited hold), so every request lands in the usage rows `/v1/usage`
reads. `check` is the same test without a hold, for a streamed answer to refuse with a 403 or
429 before its 200 goes out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

from flux_proxy.api.caller import KEYLESS, Caller
from flux_proxy.clock import Clock, iso, next_utc_midnight, utc_day
from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage, ImageJob
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.models import MODELS, ModelSpec
from flux_proxy.settings import Settings
from flux_proxy.store.base import KeyReservation, StateStore, UsageRow

_UNHELD = itertools.count(1)  # ids of the holds of keys without limits


def model_not_allowed(caller: Caller, model: ModelSpec) -> ApiError:
    """The 403 for a model outside the key's `models` (also a batch line's, up front)."""
    allowed = [spec.short_name for spec in MODELS if caller.may_use(spec.id)]
    instead = f"it may use {', '.join(allowed)} (send model), or " if allowed else ""
    return ApiError(
        403,
        f"this API key ({caller.name}) may not use the model {model.short_name!r} "
        f"({model.id}); {instead}ask an admin to add it to the key's `models`",
        param="model",
        code="model_not_allowed",
    )


class KeyQuota:
    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        keys: Any = None,  # the KeyRing, to find a key's limits from its name
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self.keys = keys

    def caller(self, caller: Caller | str) -> Caller:
        """A `Caller` from itself or its name (jobs and batch lines carry their owner's name,
        and run with the owner's key as loaded now). Work whose key has been removed since
        is refused: without its key it would have no limits at all."""
        if isinstance(caller, Caller):
            return caller
        if caller in KEYLESS:
            return KEYLESS[caller]
        if self.keys is None or self.settings.no_auth:  # no key is checked: none can be gone
            return Caller(caller, "user")
        # The file may have changed since the last poll (another replica took the new key).
        found = self.keys.caller_named(caller)
        if found is None and self.keys.reload_if_changed():
            found = self.keys.caller_named(caller)
        if found is None:
            raise ApiError(
                403,
                f"the API key {caller!r} that this work belongs to is no longer in "
                "API_KEYS_FILE or API_MASTER_KEY, so nothing more is made for it",
                code="key_removed",
            )
        return found

    @property
    def keep_days(self) -> int:
        return self.settings.usage_history_days

    async def reserve(self, caller: Caller | str, image_request: Any) -> QuotaHold:
        """Hold what `image_request` (an `ImageRequest`) may cost `caller` today, or raise."""
        job: ImageJob = image_request.job
        return await self.reserve_images(
            self.caller(caller), job.model, image_request.n, job.estimated_neurons()
        )

    async def check(self, caller: Caller | str, image_request: Any) -> None:
        """Raise the 403 or 429 that `reserve` would, without holding anything."""
        caller = self.caller(caller)
        job: ImageJob = image_request.job
        self._check_model(caller, job.model)
        if not caller.limited:
            return
        now = self.clock.now()
        day = utc_day(now)
        seen = await self.store.key_usage(caller.name, day)
        images, neurons = image_request.n, image_request.n * job.estimated_neurons()
        over_images = caller.daily_images is not None and (
            seen.images + seen.reserved_images + images > caller.daily_images
        )
        over_neurons = caller.daily_neurons is not None and (
            seen.neurons + seen.reserved_neurons + neurons > caller.daily_neurons
        )
        if over_images or over_neurons:
            raise await self._exceeded(caller, day, images, neurons, now)

    def _check_model(self, caller: Caller, model: ModelSpec) -> None:
        if not caller.may_use(model.id):
            self._refused(caller, "model")
            raise model_not_allowed(caller, model)

    async def reserve_images(
        self, caller: Caller, model: ModelSpec, images: int, per_image: float
    ) -> QuotaHold:
        self._check_model(caller, model)
        neurons = images * per_image
        now = self.clock.now()
        day = utc_day(now)
        if not caller.limited:
            # Nothing to hold against: no store round trip on the hot path (on SQLite a write
            # transaction). Settling still writes the usage rows.
            # Never stored, so a local counter names it (no random bytes per request).
            hold = KeyReservation(f"unheld-{next(_UNHELD)}", caller.name, day, images, neurons)
            return QuotaHold(self, caller, hold, model, per_image)
        hold = await self.store.try_reserve_key(
            caller.name,
            day,
            images,
            neurons,
            caller.daily_images,
            caller.daily_neurons,
            # As long as the work can run (a call sent before a hang-up runs to its end).
            ttl=self.settings.request_deadline + self.settings.upstream_read_timeout + 60,
        )
        if hold is None:
            raise await self._exceeded(caller, day, images, neurons, now)
        return QuotaHold(self, caller, hold, model, per_image)

    async def today(self, caller: Caller) -> dict:
        """The calling key's limits and what is left of them today (`/v1/usage/quota`)."""
        now = self.clock.now()
        day = utc_day(now)
        seen = await self.store.key_usage(caller.name, day)
        images_left = _left(caller.daily_images, seen.images + seen.reserved_images)
        neurons_left = _left(caller.daily_neurons, seen.neurons + seen.reserved_neurons)
        return {
            "object": "usage.quota",
            "key": caller.name,
            "role": caller.role,
            "day": day,
            "daily_images": caller.daily_images,
            "daily_neurons": caller.daily_neurons,
            "models": sorted(caller.models) if caller.models is not None else None,
            "images_used": seen.images,
            "neurons_used": round(seen.neurons, 2),
            "images_reserved": seen.reserved_images,
            "neurons_reserved": round(seen.reserved_neurons, 2),
            "images_remaining": images_left,
            "neurons_remaining": None if neurons_left is None else round(neurons_left, 2),
            "next_reset": iso(next_utc_midnight(now)),
        }

    async def _exceeded(
        self, caller: Caller, day: str, images: int, neurons: float, now: float
    ) -> ApiError:
        seen = await self.store.key_usage(caller.name, day)
        held_images = seen.images + seen.reserved_images
        if caller.daily_images is not None and held_images + images > caller.daily_images:
            limit = "daily_images"
            what = (
                f"{images} image(s) asked, {max(0, caller.daily_images - held_images)} of "
                f"{caller.daily_images} left today"
            )
        else:
            limit = "daily_neurons"
            left = max(0.0, (caller.daily_neurons or 0) - seen.neurons - seen.reserved_neurons)
            what = (
                f"about {neurons:.0f} neurons asked, {left:.0f} of "
                f"{caller.daily_neurons:.0f} left today"
            )
        self._refused(caller, limit)
        reset = next_utc_midnight(now)
        return ApiError(
            429,
            f"this API key ({caller.name}) has reached its {limit}: {what}; "
            f"it resets at 00:00 UTC ({iso(reset)})",
            code="key_quota_exceeded",
            headers={"retry-after": str(max(1, math.ceil(reset - now))), "x-should-retry": "false"},
        )

    def _refused(self, caller: Caller, reason: str) -> None:
        log_event("key_refused", key_name=caller.name, reason=reason)
        if self.metrics:
            self.metrics.child(self.metrics.key_refusals, caller.name, reason).inc()


class QuotaHold:
    """One request's hold on its key's quota: count what is made, then `finish()` once."""

    def __init__(
        self,
        quota: KeyQuota,
        caller: Caller,
        hold: KeyReservation,
        model: ModelSpec,
        per_image: float,
    ) -> None:
        self.quota = quota
        self.caller = caller
        self.hold = hold
        self.model = model
        self.per_image = per_image  # the estimate, for an image whose neurons were not told
        self._made: list[tuple[int, float]] = []  # (account number, neurons) per image
        self._cached: list[float] = []  # neurons each cache hit saved
        self._finished = False

    def count(self, image: GeneratedImage) -> None:
        """An image made upstream for this request."""
        neurons = image.neurons if image.neurons is not None else self.per_image
        self._made.append((image.account, float(neurons)))

    def count_cached(self, image: GeneratedImage) -> None:
        """An image served from the seeded cache (or another request's identical flight)."""
        self._cached.append(float(image.neurons if image.neurons is not None else self.per_image))

    async def settle(self, made: Iterable[Any]) -> None:
        """Finish with the work's images (`MadeImage`s: `.image`, `.cached`)."""
        for item in made:
            if getattr(item, "cached", False):
                self.count_cached(item.image)
            else:
                self.count(item.image)
        await self.finish()

    async def finish(self) -> None:
        """Settle with what was counted (release when nothing was). Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        quota, hold, name = self.quota, self.hold, self.caller.name
        model = self.model.short_name
        rows: list[UsageRow] = []
        if self._cached:
            rows.append(
                UsageRow(
                    hold.day,
                    name,
                    "",
                    model,
                    requests=0 if self._made else 1,
                    cache_hits=len(self._cached),
                    neurons_saved=round(sum(self._cached), 4),
                )
            )
        if not self._made:
            await quota.store.release_key(hold)
            # A request that made nothing still counts as one (failed, or all from the cache).
            rows = rows or [UsageRow(hold.day, name, "", model, requests=1)]
            await quota.store.record_usage(rows, quota.keep_days)
            return
        per_account: dict[int, tuple[int, float]] = {}
        for account, neurons in self._made:
            images, spent = per_account.get(account, (0, 0.0))
            per_account[account] = (images + 1, spent + neurons)
        first = self._made[0][0]
        rows += [
            UsageRow(
                hold.day,
                name,
                str(account),
                model,
                images=images,
                neurons=round(spent, 4),
                requests=1 if account == first else 0,
            )
            for account, (images, spent) in per_account.items()
        ]
        await quota.store.settle_key(hold, rows, quota.keep_days)
        if quota.metrics:
            metrics = quota.metrics
            metrics.child(metrics.key_images, name, model).inc(len(self._made))
            metrics.child(metrics.key_neurons, name).inc(sum(n for _, n in self._made))


def _left(limit: float | None, used: float) -> Any:
    if limit is None:
        return None
    return max(0, limit - used)
