"""What a request's work produced, and how it is kept in the state store for a retry.

A `WorkResult` holds the upstream images as they came (before any output conversion), so a
replay can be rendered in whatever form the repeat asks for. Stored as a JSON header and the
images' bytes (see below); the same codec serves the seeded cache's single images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import orjson

from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage
from flux_proxy.logs import log_event

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


def failure_of(error: BaseException, *, request_id: str, index: int) -> ApiError:
    """An image's failure as a caller may see it: ApiErrors as they are, anything else an
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


def not_made(index: int) -> ApiError:
    """An image of a kept result that was never made: the caller left before its call was
    sent, so it was dropped unpaid. The retry that collects the result is told so."""
    return ApiError(
        503,
        f"image {index} was not made: the request was abandoned before its call was sent "
        "(nothing was paid for it); ask for it again",
        code="image_not_made",
    )


# The stored form: one small JSON header line, then the images' bytes back to back, each in the
# form it already has (base64 text as ASCII, or raw bytes), so keeping an image costs one copy
# of it: orjson writing a 6 MB base64 string takes ~5 ms, a plain copy well under 1 ms.


def _payload(image: GeneratedImage) -> tuple[str, bytes]:
    if image._b64 is not None:
        return "b64", image._b64.encode("ascii")
    return "raw", image.data


def _image_meta(image: GeneratedImage, form: str, length: int) -> list:
    return [image.mime, image.account, image.neurons, image.seed, form, length]


def _image_at(view: memoryview, offset: int, meta: list) -> tuple[GeneratedImage, int]:
    mime, account, neurons, seed, form, length = meta
    chunk = view[offset : offset + length]
    fields = {"mime": mime, "account": account, "neurons": neurons, "seed": seed}
    if form == "b64":
        image = GeneratedImage.from_b64(str(chunk, "ascii"), **fields)
    else:
        image = GeneratedImage.from_bytes(bytes(chunk), **fields)
    return image, offset + length


def _pack(header: object, payloads: list[bytes]) -> bytes:
    return b"".join([orjson.dumps(header), b"\n", *payloads])


def _unpack(data: bytes) -> tuple[object, memoryview, int]:
    end = data.index(b"\n")
    return orjson.loads(data[:end]), memoryview(data), end + 1


def encode_result(result: WorkResult) -> bytes:
    images, payloads = [], []
    for made in result.images:
        form, payload = _payload(made.image)
        images.append(
            [made.index, made.seed, made.cached, *_image_meta(made.image, form, len(payload))]
        )
        payloads.append(payload)
    header = {
        "id": result.id,
        "created": result.created,
        "images": images,
        "errors": [[index, e.status, e.body()["error"]] for index, e in result.errors],
        "cache": result.cache,  # a replay answers the original's x-flux-cache
    }
    return _pack(header, payloads)


def decode_result(data: bytes) -> WorkResult:
    doc, view, offset = _unpack(data)
    images = []
    for index, seed, cached, *meta in doc["images"]:
        image, offset = _image_at(view, offset, meta)
        images.append(MadeImage(index, image, seed, cached))
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
    # Results kept before the cache status was stored have none: "bypass", as they answered.
    return WorkResult(doc["id"], doc["created"], images, errors, cache=doc.get("cache", "bypass"))


def encode_image(image: GeneratedImage) -> bytes:
    form, payload = _payload(image)
    return _pack(_image_meta(image, form, len(payload)), [payload])


def decode_image(data: bytes) -> GeneratedImage:
    meta, view, offset = _unpack(data)
    return _image_at(view, offset, meta)[0]
