"""Results → responses: the OpenAI `ImagesResponse` JSON (with the seed's extra fields),
URL entries, and every error in the OpenAI shape.

Building the body (`images_body`, `image_entry`) is kept apart from sending it
(`json_response`), so a streaming (SSE) answer can reuse the entries and only add its own
framing.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response

from flux_proxy.api.parse import ImageRequest
from flux_proxy.errors import ApiError
from flux_proxy.image_store import ImageStore
from flux_proxy.job import GeneratedImage
from flux_proxy.settings import Settings

FILES_PATH = "/v1/images/files/"


@dataclass(frozen=True)
class Outcome:
    """What `n` generations produced: images by index, and the failures by index."""

    images: list[tuple[int, GeneratedImage]]
    errors: list[tuple[int, ApiError]]


def json_response(
    body: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    # orjson writes the multi-megabyte base64 strings in one pass, no re-encoding.
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.body(), error.status, error.headers)


def base_url_for(request: Request, settings: Settings) -> str:
    """The absolute base for URLs we hand out: the configured one, else from the request.

    X-Forwarded-Proto/Host are honoured only when the direct peer is a trusted proxy;
    otherwise anyone could make us hand out links to their own host.
    """
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    scheme = request.url.scheme
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    if _is_trusted(request, settings.trusted_proxies):
        forwarded_proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
        forwarded_host = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        if forwarded_proto in ("http", "https"):
            scheme = forwarded_proto
        if forwarded_host:
            host = forwarded_host
    return f"{scheme}://{host}"


def _is_trusted(request: Request, trusted: list[str]) -> bool:
    if not trusted or request.client is None:
        return False
    try:
        peer = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if peer in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


async def image_entry(
    image: GeneratedImage,
    request: ImageRequest,
    *,
    image_store: ImageStore,
    base_url: str,
) -> dict:
    """One `data[]` item. With no `response_format` given we answer both forms: OpenAI SDK
    users read `b64_json`, LangChain reads only `url`."""
    entry: dict = {}
    if request.response_format in (None, "b64_json"):
        entry["b64_json"] = image.b64  # the upstream's base64, untouched
    if request.response_format in (None, "url"):
        name = await image_store.put(image.data, image.mime, image.extension)
        entry["url"] = f"{base_url}{FILES_PATH}{name}"
    entry["revised_prompt"] = request.prompt_text
    entry["prompt"] = request.prompt_text  # the seed's field
    return entry


async def images_body(
    outcome: Outcome,
    request: ImageRequest,
    *,
    created: int,
    image_store: ImageStore,
    base_url: str,
) -> dict:
    job = request.job
    data = [
        await image_entry(image, request, image_store=image_store, base_url=base_url)
        for _, image in outcome.images
    ]
    seeds = [request.seeds[index] for index, _ in outcome.images]
    first = outcome.images[0][1]
    width = job.width or job.model.default_width
    height = job.height or job.model.default_height
    neurons = [image.neurons for _, image in outcome.images if image.neurons is not None]
    body: dict = {
        "created": created,
        "id": f"img_{uuid.uuid4().hex}",
        "object": "image.generation",
        "model": job.model.id,
        "data": data,
        "account_used": first.account,
        "accounts_used": [image.account for _, image in outcome.images],
        "seed": seeds[0],
        "seeds": seeds,
        "size": f"{width}x{height}" if width and height else None,
        "output_format": first.extension,
        "usage": {"neurons": round(sum(neurons), 2)},
    }
    if outcome.errors:
        # Partial failure: the images that were made, plus which of the n failed and why.
        body["errors"] = [{"index": index, **error.body()} for index, error in outcome.errors]
    return body
