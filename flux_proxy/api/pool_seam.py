"""What the API layer needs of the account pool: the seam tests fill with a stand-in."""

from __future__ import annotations

from typing import Protocol

from flux_proxy.job import GeneratedImage, ImageJob


class ImagePool(Protocol):
    """`AccountPool`, or anything with the same two methods (a recording fake in tests)."""

    async def generate(self, job: ImageJob, *, request_id: str) -> GeneratedImage: ...

    async def snapshot(self) -> list[dict]: ...
