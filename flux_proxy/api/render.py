"""Results → responses: the OpenAI `ImagesResponse` JSON (with the seed's extra fields),
URL entries, and every error in the OpenAI shape.

Building the body (`images_body`, `image_entry`) is kept apart from sending it
(`json_response`), so a streaming (SSE) answer can reuse the entries and only add its own
framing.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response

from flux_proxy.api.output import OutputImage
from flux_proxy.api.parse import ImageRequest
from flux_proxy.errors import ApiError
from flux_proxy.image_store import ImageStore
from flux_proxy.settings import Settings

FILES_PATH = "/v1/images/files/"


@dataclass(frozen=True)
class Outcome:
    """What `n` generations produced: images by index, and the failures by index."""

    images: list[tuple[int, OutputImage]]
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


def usage(neurons: list[float]) -> dict:
    """OpenAI's usage shape (no tokens are counted here, so those are 0) plus the neurons the
    upstream billed (`cf-ai-neurons`), which is what a Workers AI image really costs; an
    image from the seeded cache cost nothing this time."""
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
        "neurons": round(sum(neurons), 2),
    }


async def store_image(output: OutputImage, image_store: ImageStore, base_url: str) -> str:
    image = output.image
    name = await image_store.put(image.data, image.mime, image.extension)
    return f"{base_url}{FILES_PATH}{name}"


async def image_entry(
    output: OutputImage,
    request: ImageRequest,
    *,
    image_store: ImageStore,
    base_url: str,
) -> dict:
    """One `data[]` item. With no `response_format` given we answer both forms: OpenAI SDK
    users read `b64_json`, LangChain reads only `url`."""
    entry: dict = {}
    if request.response_format in (None, "b64_json"):
        entry["b64_json"] = output.image.b64  # the upstream's base64, untouched unless converted
    if request.response_format in (None, "url"):
        entry["url"] = await store_image(output, image_store, base_url)
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
    result_id: str | None = None,
) -> dict:
    job = request.job
    data = [
        await image_entry(output, request, image_store=image_store, base_url=base_url)
        for _, output in outcome.images
    ]
    seeds = [output.seed for _, output in outcome.images]
    first = outcome.images[0][1]
    neurons = [o.billed_neurons for _, o in outcome.images if o.billed_neurons is not None]
    body: dict = {
        "created": created,
        "id": result_id or f"img_{secrets.token_hex(16)}",
        "object": "image.generation",
        "model": job.model.id,
        "data": data,
        "account_used": first.image.account,
        "accounts_used": [output.image.account for _, output in outcome.images],
        "seed": seeds[0],
        "seeds": seeds,
        "size": first.size,
        "output_format": first.output_format,
        "quality": request.quality,
        "background": "opaque",  # what every served model makes, whatever was asked
        "usage": usage(neurons),
    }
    if outcome.errors:
        # Partial failure: the images that were made, plus which of the n failed and why.
        body["errors"] = [{"index": index, **error.body()} for index, error in outcome.errors]
    return body


def stream_event(
    output: OutputImage,
    request: ImageRequest,
    *,
    edit: bool,
    created_at: int,
    index: int,
    url: str | None = None,
) -> dict:
    """One `image_generation.completed` / `image_edit.completed` event, as OpenAI streams it,
    plus the proxy's own fields (`index`, `seed`, `model`, `account_used`)."""
    neurons = [output.billed_neurons] if output.billed_neurons is not None else []
    event: dict = {
        "type": "image_edit.completed" if edit else "image_generation.completed",
        "b64_json": output.image.b64,
        "created_at": created_at,
        "size": output.size or "auto",
        "output_format": output.output_format,
        "quality": request.quality,
        "background": "opaque",
        "usage": usage(neurons),
        "index": index,
        "seed": output.seed,
        "model": request.job.model.id,
        "account_used": output.image.account,
        "revised_prompt": request.prompt_text,
    }
    if url is not None:
        event["url"] = url
    return event
