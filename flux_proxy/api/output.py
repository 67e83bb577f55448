"""What the caller gets back for one generated image: the upstream bytes untouched, or
converted to the `output_format` / `output_compression` they asked for.

Conversion decodes and re-encodes the whole image, so it happens only when it changes
something (another format, or a quality for a lossy format) and always in a worker thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from flux_proxy.api.parse import ImageRequest
from flux_proxy.errors import ApiError
from flux_proxy.images import OUTPUT_MIMES, convert_output
from flux_proxy.job import GeneratedImage


@dataclass(frozen=True)
class OutputImage:
    image: GeneratedImage  # the bytes to hand out, with their mime type
    width: int | None  # None: the model's own size was not asked for nor measured
    height: int | None
    seed: int | None
    cached: bool = False  # from the seeded cache: nothing was billed for it this time

    @property
    def billed_neurons(self) -> float | None:
        """What this image cost upstream for this answer (None: the upstream did not say)."""
        return 0.0 if self.cached else self.image.neurons

    @property
    def output_format(self) -> str:
        return self.image.extension

    @property
    def size(self) -> str | None:
        return f"{self.width}x{self.height}" if self.width and self.height else None


def conversion_target(image: GeneratedImage, request: ImageRequest) -> str | None:
    """The format to convert to, or None when the upstream bytes already are the answer."""
    wanted = request.output_format
    if wanted is not None and OUTPUT_MIMES[wanted] != image.mime:
        return wanted
    current = wanted or image.extension
    if request.output_compression is not None and current in ("jpeg", "webp"):
        return current  # same format, new quality
    return None


async def finish(image: GeneratedImage, request: ImageRequest, seed: int | None) -> OutputImage:
    job = request.job
    width = job.width or job.model.default_width
    height = job.height or job.model.default_height
    target = conversion_target(image, request)
    if target is None:
        return OutputImage(image, width, height, seed)
    try:
        converted = await asyncio.to_thread(
            convert_output, image.data, target, request.output_compression
        )
    except Exception:  # an upstream image Pillow cannot read: the upstream's fault, not ours
        raise ApiError(
            502,
            f"the model's image could not be converted to {target}",
            code="conversion_failed",
        ) from None
    result = GeneratedImage.from_bytes(
        converted.data,
        mime=converted.mime,
        account=image.account,
        neurons=image.neurons,
        seed=image.seed,
    )
    return OutputImage(result, converted.width, converted.height, seed)
