"""From the work layer's images to the answer's: `finish_all` turns a `WorkResult` (from
`ImageWork.produce`, `flux_proxy/work/`) into an `Outcome` in the form the request asks for,
and `failure_of` says how an image's failure may be shown to the caller.
"""

from __future__ import annotations

import asyncio
import logging

from flux_proxy.api.output import finish
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import Outcome
from flux_proxy.errors import ApiError
from flux_proxy.logs import log_event
from flux_proxy.work.results import WorkResult


def failure_of(error: BaseException, *, request_id: str, index: int) -> ApiError:
    """An image's failure as the caller may see it: ApiErrors as they are, anything else an
    internal error (logged by type, never shown)."""
    if isinstance(error, ApiError):
        return error
    log_event(
        "generate_failed",
        logging.ERROR,
        request_id=request_id,
        index=index,
        error=type(error).__name__,
    )
    return ApiError(500, "internal error", code="internal_error")


async def finish_all(result: WorkResult, image_request: ImageRequest) -> Outcome:
    """The work's images in the form this request asks for (converted concurrently when its
    `output_format`/`output_compression` differs from the upstream's bytes)."""
    if len(result.images) == 1:  # no task of its own: one hop less through the event loop
        made = result.images[0]
        finished = [await finish(made.image, image_request, made.seed)]
    else:
        finished = await asyncio.gather(
            *(finish(made.image, image_request, made.seed) for made in result.images)
        )
    images = [(made.index, output) for made, output in zip(result.images, finished, strict=True)]
    return Outcome(images, list(result.errors))
