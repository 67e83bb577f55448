"""The one place the MCP tools hand a validated request over to be made.

Entry points never call the pool directly. Until the work layer (`flux_proxy/work/`) is on
this branch, this calls the HTTP API's own `generate_all`, so a request made by an agent goes
through the same failover and budgets as one made over HTTP; switching to the work layer is a
change to this function alone.
"""

from __future__ import annotations

from flux_proxy.api.caller import Caller
from flux_proxy.api.generate import generate_all
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import Outcome
from flux_proxy.api.routes import Services


async def make_images(
    services: Services, image_request: ImageRequest, *, request_id: str, caller: Caller
) -> Outcome:
    """The request's `n` images (partial failures in `Outcome.errors`); an `ApiError` when
    none was made. `caller` owns the work once the work layer keeps results per owner."""
    return await generate_all(services.pool, image_request, request_id)
