"""One canonical key per request (for repeats) and per image (for the seeded cache).

BLAKE2b over the model, the prompt, every generation parameter and the reference images'
bytes. How the answer is rendered (b64/url, output format, stream) is not part of it: a repeat
or a cache hit is rendered in whatever form the new request asks for. Reference images are
hashed once per request; each image's key only adds its seed to a copy of that state.
"""

from __future__ import annotations

from functools import cached_property
from hashlib import blake2b

import orjson

from flux_proxy.api.parse import ImageRequest
from flux_proxy.job import ReferenceImage

VERSION = b"flux-proxy work v1\n"
DIGEST_SIZE = 20


def _image_digest(image: ReferenceImage) -> bytes:
    return blake2b(image.data, digest_size=DIGEST_SIZE).digest() + image.mime.encode()


class Fingerprint:
    """The keys of one request. Build it once; every key is derived from the same state."""

    def __init__(self, request: ImageRequest) -> None:
        self._request = request
        job = request.job
        state = blake2b(VERSION, digest_size=DIGEST_SIZE)
        state.update(
            orjson.dumps(
                [
                    job.model.id,
                    job.prompt,
                    job.width,
                    job.height,
                    job.steps,
                    job.guidance,
                    job.negative_prompt,
                    job.strength,
                    len(job.references),
                    job.mask is not None,
                ]
            )
        )
        for reference in job.references:
            state.update(_image_digest(reference))
        if job.mask is not None:
            state.update(_image_digest(job.mask))
        self._state = state

    @cached_property
    def request(self) -> str:
        """The whole request: what an SDK retry or an Idempotency-Key repeat must match.
        Random seeds are not in it (a retry draws new ones); the caller's `seed` and `n` are."""
        state = self._state.copy()
        state.update(orjson.dumps(["request", self._request.n, self._request.requested_seed]))
        return state.hexdigest()

    def image(self, seed: int) -> str:
        """One image with a fixed seed: the seeded cache's content address."""
        state = self._state.copy()
        state.update(b"image seed=" + str(seed).encode())
        return state.hexdigest()
