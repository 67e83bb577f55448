"""Per-key daily quotas and usage rows: one place every image path goes through.

`KeyQuota.reserve(caller, image_request)` runs before any upstream call. It refuses a model
the key may not use (403 `model_not_allowed`) and holds the request's images and estimated
neurons against the key's `daily_images` / `daily_neurons` in the state store, atomically and
across replicas (429 `key_quota_exceeded` when they do not fit), exactly like the pool holds
account budgets. The `QuotaHold` it returns counts each image made (`counting(pool)` wraps the
pool, so any caller of `pool.generate` counts for free) and `finish()` settles the hold with
the real figures, or releases it when nothing was made. Keys without limits are held too (an
unlimited hold), so every request lands in the usage rows `/v1/usage` reads.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from flux_proxy.api.caller import Caller
from flux_proxy.clock import Clock, iso, next_utc_midnight, utc_day
from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage, ImageJob
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.models import ModelSpec
from flux_proxy.settings import Settings
from flux_proxy.store.base import KeyReservation, StateStore, UsageRow


class KeyQuota:
    def __init__(
        self, store: StateStore, clock: Clock, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.metrics = metrics

    @property
    def keep_days(self) -> int:
        return self.settings.usage_history_days

    async def reserve(self, caller: Caller, image_request: Any) -> QuotaHold:
        """Hold what `image_request` (an `ImageRequest`) may cost `caller` today, or raise."""
        job: ImageJob = image_request.job
        return await self.reserve_images(
            caller, job.model, image_request.n, image_request.n * job.estimated_neurons()
        )

    async def reserve_images(
        self, caller: Caller, model: ModelSpec, images: int, neurons: float
    ) -> QuotaHold:
        if not caller.may_use(model.id):
            self._refused(caller, "model")
            raise ApiError(
                403,
                f"this API key ({caller.name}) may not use the model {model.short_name!r} "
                f"({model.id}); ask an admin to add it to the key's `models`",
                param="model",
                code="model_not_allowed",
            )
        now = self.clock.now()
        day = utc_day(now)
        hold = await self.store.try_reserve_key(
            caller.name,
            day,
            images,
            neurons,
            caller.daily_images,
            caller.daily_neurons,
            ttl=self.settings.request_deadline + 60,
        )
        if hold is None:
            raise await self._exceeded(caller, day, images, neurons, now)
        return QuotaHold(self, caller, hold, model)

    async def record_cache_hit(
        self, caller: Caller, model: ModelSpec, neurons_saved: float, images: int = 1
    ) -> None:
        """For the seeded cache: `images` served from the cache instead of made upstream.
        They fill the `cache_hits` and `neurons_saved` columns and count against no quota."""
        row = UsageRow(
            utc_day(self.clock.now()),
            caller.name,
            "",
            model.short_name,
            requests=1,
            cache_hits=images,
            neurons_saved=float(neurons_saved),
        )
        await self.store.record_usage([row], self.keep_days)

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

    def __init__(self, quota: KeyQuota, caller: Caller, hold: KeyReservation, model: ModelSpec):
        self.quota = quota
        self.caller = caller
        self.hold = hold
        self.model = model
        self._made: list[tuple[int, float]] = []  # (account number, neurons) per image
        self._finished = False

    def count(self, image: GeneratedImage, estimate: float) -> None:
        neurons = image.neurons if image.neurons is not None else estimate
        self._made.append((image.account, float(neurons)))

    def counting(self, pool: Any) -> CountingPool:
        return CountingPool(pool, self)

    async def finish(self) -> None:
        """Settle with what was made (release when nothing was). Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        quota, hold, name = self.quota, self.hold, self.caller.name
        model = self.model.short_name
        if not self._made:
            await quota.store.release_key(hold)
            failed = UsageRow(hold.day, name, "", model, requests=1)
            await quota.store.record_usage([failed], quota.keep_days)
            return
        per_account: dict[int, tuple[int, float]] = {}
        for account, neurons in self._made:
            images, spent = per_account.get(account, (0, 0.0))
            per_account[account] = (images + 1, spent + neurons)
        first = self._made[0][0]
        rows = [
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

    async def finishing(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A streamed answer's events, with the hold finished when the stream ends."""
        try:
            async for event in events:
                yield event
        finally:
            await asyncio.shield(self.finish())


class CountingPool:
    """The pool as one request sees it: every image it makes is counted on the request's hold."""

    def __init__(self, pool: Any, hold: QuotaHold) -> None:
        self._pool = pool
        self._hold = hold

    async def generate(self, job: ImageJob, *, request_id: str) -> GeneratedImage:
        image = await self._pool.generate(job, request_id=request_id)
        self._hold.count(image, job.estimated_neurons())
        return image

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _left(limit: float | None, used: float) -> Any:
    if limit is None:
        return None
    return max(0, limit - used)
