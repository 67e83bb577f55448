"""From the work layer's images to the answer's: `finish_all` turns a `WorkResult` (from
`ImageWork.produce`, `flux_proxy/work/`) into an `Outcome` in the form the request asks for,
and re-exports `failure_of` (the work layer's: how an image's failure may be shown).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from flux_proxy.api.output import finish
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import Outcome
from flux_proxy.work.produce import failure_of
from flux_proxy.work.results import WorkResult

__all__ = ["failure_of", "finish_all"]


async def finish_all(result: WorkResult, image_request: ImageRequest) -> Outcome:
    """The work's images in the form this request asks for (converted concurrently when its
    `output_format`/`output_compression` differs from the upstream's bytes)."""
    if len(result.images) == 1:  # no task of its own: one hop less through the event loop
        made = result.images[0]
        finished = [await finish(made.image, image_request, made.seed, cached=made.cached)]
    else:
        finished = await asyncio.gather(
            *(
                finish(made.image, image_request, made.seed, cached=made.cached)
                for made in result.images
            )
        )
    images = [
        (made.index, replace(output, cached=made.cached))
        for made, output in zip(result.images, finished, strict=True)
    ]
    return Outcome(images, list(result.errors))
