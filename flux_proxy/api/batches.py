"""The Batch API, as the openai SDK's `client.batches` calls it, plus the documented
extension `POST /v1/batches/estimate` for the web page. Handlers translate the wire format;
`flux_proxy.work.batch_service.BatchService` does the work."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flux_proxy.api import batches_openapi  # noqa: F401  (registers the OpenAPI entries)
from flux_proxy.api.body import parse_json_object
from flux_proxy.api.caller import caller_of
from flux_proxy.api.files import list_limit, page, parts
from flux_proxy.api.render import base_url_for, json_response
from flux_proxy.errors import too_large
from flux_proxy.work.batch_estimates import estimate as estimate_batch

MAX_BATCH_LIST = 100  # OpenAI's page limit for batches


async def _json(request: Request, limit: int) -> dict:
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_large(f"request body is over the limit of {limit} bytes")
    return parse_json_object(data)


async def create(request: Request) -> Response:
    settings = request.app.state.services.settings
    body = await _json(request, 1024 * 1024)
    batch = await parts(request).service.create(
        caller_of(request.scope), body, base_url_for(request, settings)
    )
    return json_response(batch)


async def retrieve(request: Request) -> Response:
    batch = await parts(request).service.get(
        caller_of(request.scope), request.path_params["batch_id"]
    )
    return json_response(batch)


async def list_batches(request: Request) -> Response:
    batches, has_more = await parts(request).service.list(
        caller_of(request.scope),
        limit=list_limit(request, 20, MAX_BATCH_LIST),
        after=request.query_params.get("after") or None,
    )
    return json_response(page(batches, has_more))


async def finished_lines(request: Request) -> Response:
    data = await parts(request).service.finished_lines(
        caller_of(request.scope), request.path_params["batch_id"]
    )
    return Response(data, media_type="application/jsonl")


async def cancel(request: Request) -> Response:
    batch = await parts(request).service.cancel(
        caller_of(request.scope), request.path_params["batch_id"]
    )
    return json_response(batch)


async def estimate(request: Request) -> Response:
    """`{"endpoint", "bodies": [<line body>, ...]}` → `{"estimated_neurons",
    "estimated_completion_at", "estimated_days", "lines"}`, by the batch object's own code."""
    svc = request.app.state.services
    body = await _json(request, svc.settings.max_body_bytes)
    answer = await estimate_batch(
        body.get("bodies"),
        body.get("endpoint", "/v1/images/generations"),
        settings=svc.settings,
        files=parts(request).files,
        owner=caller_of(request.scope),
        pool=svc.pool,
        store=svc.store,
        clock=svc.clock,
    )
    return json_response(answer)


def batch_routes() -> list[BaseRoute]:
    return [
        Route("/v1/batches", create, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/estimate", estimate, methods=["POST"]),
        Route("/v1/batches/{batch_id}", retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/batches/{batch_id}/output", finished_lines, methods=["GET"]),
    ]
