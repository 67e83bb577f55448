"""`stream: true`: the answer as Server-Sent Events, the way OpenAI streams images.

What a streaming caller gets (status 200, `text/event-stream`):

- `: keep-alive` comments at once and then every `STREAM_KEEPALIVE_SECONDS` while images are
  being made, so the headers arrive immediately and idle-timeout proxies keep the line open;
- per image, as each is finished: `event: image_generation.completed` (`image_edit.completed`
  for edits) with `data: {"type", "b64_json", "created_at", "size", "output_format",
  "quality", "background", "usage", ...}`, plus the proxy's `index`, `seed`, `model`,
  `account_used` (and `url` when `response_format` was `url`). No partial images: no served
  model makes any, so `partial_images` is accepted and yields nothing;
- when an image failed (upstream refusal, every account parked, ...): one
  `event: error` / `data: {"type": "error", "error": {...}}` after the images that were made,
  which the openai SDK raises as `APIError`; with `n > 1` it also lists every failure;
- last, `data: [DONE]`.

A request that is invalid before anything is made gets the ordinary JSON 4xx instead: the SDK
checks the status before it reads a stream and raises the matching error (`BadRequestError`).
If the caller hangs up, images not yet sent upstream are cancelled; sent ones are finished and
kept for a retry (see `flux_proxy/work/`). A replayed or cached answer streams the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Scope

from flux_proxy.api.generate import failure_of
from flux_proxy.api.middleware import note
from flux_proxy.api.output import finish
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import store_image, stream_event
from flux_proxy.errors import ApiError
from flux_proxy.work.results import MadeImage, WorkFailed

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: pass events on as they come
}


def sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(failures: list[tuple[int, ApiError]], n: int) -> dict:
    index, first = failures[0]
    event: dict = {"type": "error", "status": first.status, **first.body()}
    if n > 1:
        event["error"]["message"] = f"image {index} of {n} failed: {first.message}"
        event["errors"] = [{"index": i, "status": e.status, **e.body()} for i, e in failures]
    return event


def stream_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


async def image_events(
    services,
    image_request: ImageRequest,
    *,
    edit: bool,
    request_id: str,
    base_url: str,
    scope: Scope,
    options: dict,
) -> AsyncIterator[bytes]:
    """The SSE body, through the work layer (`ImageWork.produce`, each image as it is ready).
    Never raises: every failure becomes an error event."""
    yield KEEPALIVE
    event_name = "image_edit.completed" if edit else "image_generation.completed"
    ready: asyncio.Queue[MadeImage] = asyncio.Queue()
    work = asyncio.ensure_future(
        services.work.produce(
            image_request, request_id=request_id, on_image=ready.put_nowait, **options
        )
    )
    # Retrieve every outcome, so a failure after a hang-up is not logged as lost.
    work.add_done_callback(lambda t: t.cancelled() or t.exception())
    made = 0
    try:
        while not (work.done() and ready.empty()):
            if ready.empty():
                getter = asyncio.ensure_future(ready.get())
                done, _ = await asyncio.wait(
                    {getter, work},
                    timeout=services.settings.stream_keepalive_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter.done():
                    ready.put_nowait(getter.result())
                else:
                    getter.cancel()
                if not done:
                    yield KEEPALIVE
                continue
            image = ready.get_nowait()
            output = replace(
                await finish(image.image, image_request, image.seed), cached=image.cached
            )
            url = None
            if image_request.response_format == "url":
                url = await store_image(output, services.images, base_url)
            if made == 0:
                note(scope, account=output.image.account)
            made += 1
            event = stream_event(
                output,
                image_request,
                edit=edit,
                created_at=int(services.clock.now()),
                index=image.index,
                url=url,
            )
            yield sse(event_name, event)
        if made:
            services.metrics.images.labels(image_request.job.model.short_name, "stream").inc(made)
        error = work.exception()
        failures: list[tuple[int, ApiError]] = []
        if isinstance(error, WorkFailed):
            failures = list(error.errors)
        elif error is not None:
            failures = [(0, failure_of(error, request_id=request_id, index=0))]
        else:
            result = work.result()
            failures = list(result.errors)
            note(scope, cache=result.cache, replayed=result.replayed or None)
        if failures:
            failures.sort(key=lambda pair: pair[0])
            note(scope, stream_error=failures[0][1].code or failures[0][1].status)
            yield sse("error", error_event(failures, image_request.n))
        yield DONE
    except (asyncio.CancelledError, GeneratorExit):
        note(scope, client_gone=True)
        raise
    except Exception as exc:  # after the headers, a failure can only be an event
        error = failure_of(exc, request_id=request_id, index=-1)
        yield sse("error", error_event([(0, error)], 1))
        yield DONE
    finally:
        # The caller left (or we failed): the work layer cancels what was not sent yet and
        # lets sent calls finish, keeping their result for a retry.
        work.cancel()
