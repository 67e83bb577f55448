"""The one place the MCP tools hand a validated request over to be made: the work layer.

Entry points never call the pool directly. Through `ImageWork.produce` an agent's request gets
what an HTTP request gets: failover and budgets, the seeded cache, and kept results (a call
already sent when the agent cancels finishes, is paid once, and is kept under the caller's
name for a retry to collect).
"""

from __future__ import annotations

from dataclasses import dataclass

from flux_proxy.api.caller import Caller
from flux_proxy.api.generate import finish_all
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import Outcome
from flux_proxy.api.routes import Services


@dataclass(frozen=True)
class Made:
    outcome: Outcome  # the images in the request's form, and the failures, by index
    cached: frozenset[int]  # indexes served from the seeded cache: no neurons spent this time


async def make_images(
    services: Services, image_request: ImageRequest, *, request_id: str, caller: Caller
) -> Made:
    """The request's `n` images (partial failures in `outcome.errors`); an `ApiError` when
    none was made."""
    result = await services.work.produce(image_request, caller=caller.name, request_id=request_id)
    cached = frozenset(made.index for made in result.images if made.cached)
    return Made(await finish_all(result, image_request), cached)
