"""Progress notifications while a tool call's images are being made.

Workers AI says nothing until an image is done, so progress is an estimate from the model's
typical time at the requested size. Hosts show it so that a 30-second call does not look hung.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flux_proxy.api.parse import ImageRequest
from flux_proxy.models import ModelSpec

# (progress, total, message): `Context.report_progress`, a no-op when the client sent no token.
Report = Callable[[float, float | None, str | None], Awaitable[None]]
T = TypeVar("T")


async def with_progress(
    work: Awaitable[T], report: Report, request: ImageRequest, *, interval: float
) -> T:
    """Await `work`, sending progress (0-100) every `interval` seconds while it runs.

    The estimate rises towards 90 and never passes it before the work ends; values only grow
    (MCP requires each notification to carry a larger value than the last).
    """
    job = request.job
    typical = _typical_seconds(job.model, job.width, job.height)
    label = f"{request.n} image{'s' if request.n > 1 else ''} on {job.model.short_name}"
    task = asyncio.ensure_future(work)
    start = time.monotonic()
    last = 0.0
    try:
        await report(0.0, 100.0, f"making {label} (usually about {typical:.0f} s)")
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                break
            elapsed = time.monotonic() - start
            value = round(90.0 * (1.0 - math.exp(-elapsed / typical)), 1)
            if value > last:
                last = value
                await report(value, 100.0, f"making {label}: {elapsed:.0f} s so far")
        result = task.result()
        await report(100.0, 100.0, f"{label}: done")
        return result
    finally:
        if not task.done():
            task.cancel()  # the caller went away or cancelled: stop the upstream calls too


def _typical_seconds(model: ModelSpec, width: int | None, height: int | None) -> float:
    area = (width or model.default_width or 1024) * (height or model.default_height or 1024)
    return max(1.0, model.typical_seconds * area / (1024 * 1024))
