"""What a request's work produced, and how it is kept in the state store for a retry.

A `WorkResult` holds the upstream images as they came (before any output conversion), so a
replay can be rendered in whatever form the repeat asks for. Stored as one JSON document
(orjson writes the base64 strings in one pass); the same codec serves the seeded cache's
single images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import orjson

from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage

CacheStatus = Literal["hit", "miss", "bypass"]


@dataclass(frozen=True)
class MadeImage:
    """One of the n images: the upstream's bytes, the seed it was made with, and whether it
    came from the seeded cache (zero neurons this time)."""

    index: int
    image: GeneratedImage
    seed: int | None
    cached: bool = False


@dataclass
class WorkResult:
    """Everything an entry point needs to answer: images by index, failures by index, the
    answer's `id` and `created` (kept across replays), and how it was obtained."""

    id: str
    created: int
    images: list[MadeImage]
    errors: list[tuple[int, ApiError]] = field(default_factory=list)
    replayed: bool = False  # a repeat served from earlier work (x-flux-replayed: true)
    cache: CacheStatus = "bypass"  # x-flux-cache

    @property
    def neurons(self) -> float:
        """Neurons this answer cost now: nothing for cached or replayed images."""
        if self.replayed:
            return 0.0
        return sum(m.image.neurons or 0.0 for m in self.images if not m.cached)


class WorkFailed(ApiError):
    """Every image failed: the first failure (status, body, headers such as Retry-After) is
    what a caller sees; `errors` has each image's, by index."""

    def __init__(self, errors: list[tuple[int, ApiError]]) -> None:
        first = errors[0][1]
        super().__init__(
            first.status,
            first.message,
            type=first.type,
            param=first.param,
            code=first.code,
            headers=first.headers,
        )
        self.errors = errors


def _image_fields(image: GeneratedImage) -> list:
    return [image.b64, image.mime, image.account, image.neurons, image.seed]


def _image_from(fields: list) -> GeneratedImage:
    b64, mime, account, neurons, seed = fields
    return GeneratedImage.from_b64(b64, mime=mime, account=account, neurons=neurons, seed=seed)


def encode_result(result: WorkResult) -> bytes:
    return orjson.dumps(
        {
            "id": result.id,
            "created": result.created,
            "images": [[m.index, m.seed, m.cached, *_image_fields(m.image)] for m in result.images],
            "errors": [[index, e.status, e.body()["error"]] for index, e in result.errors],
        }
    )


def decode_result(data: bytes) -> WorkResult:
    doc = orjson.loads(data)
    images = [
        MadeImage(index, _image_from(rest), seed, cached)
        for index, seed, cached, *rest in doc["images"]
    ]
    errors = [
        (
            index,
            ApiError(
                status,
                error["message"],
                type=error["type"],
                param=error["param"],
                code=error["code"],
            ),
        )
        for index, status, error in doc["errors"]
    ]
    return WorkResult(doc["id"], doc["created"], images, errors)


def encode_image(image: GeneratedImage) -> bytes:
    return orjson.dumps(_image_fields(image))


def decode_image(data: bytes) -> GeneratedImage:
    return _image_from(orjson.loads(data))
