"""Making the `n` images of one request: each job through the pool, then finished (converted
when asked) in the same task, so one image's conversion overlaps the others' generation.

The images handlers go through the work layer (`flux_proxy/work/`, `ImageWork.produce`) and
use `finish_all` to turn its `WorkResult` into an `Outcome` in the form asked for;
`generate_all` is the direct path the work layer replaced, kept for stand-ins and tests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flux_proxy.api.output import OutputImage, finish
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import Outcome
from flux_proxy.errors import ApiError
from flux_proxy.job import ImageJob
from flux_proxy.logs import log_event
from flux_proxy.work.results import WorkResult


async def make_image(
    pool: Any, job: ImageJob, image_request: ImageRequest, request_id: str
) -> OutputImage:
    image = await pool.generate(job, request_id=request_id)
    return await finish(image, image_request, job.seed)


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


async def generate_all(pool: Any, image_request: ImageRequest, request_id: str) -> Outcome:
    """Make the `n` images concurrently, each with its own seed.

    Partial failure returns what was made plus the failures; if every image failed, the
    first failure is raised (with its status and headers, e.g. Retry-After).
    """
    results = await asyncio.gather(
        *(make_image(pool, job, image_request, request_id) for job in image_request.jobs()),
        return_exceptions=True,
    )
    images, errors = [], []
    for index, result in enumerate(results):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancellation and friends are not ours to swallow
            errors.append((index, failure_of(result, request_id=request_id, index=index)))
        else:
            images.append((index, result))
    if not images:
        raise errors[0][1]
    return Outcome(images, errors)


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
