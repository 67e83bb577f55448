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
So does one the work layer refuses before any image is made (an Idempotency-Key reused with
another request: 422; the key's quota: 403/429): the work starts before the headers are sent,
and the headers wait for its first look (`work/first_look.py`: the repeat check and the cache
lookups, store reads only), which also gives them `x-flux-cache` and `x-flux-replayed`. A
repeat waiting for identical work in flight cannot know those yet and goes without them.
If the caller hangs up, images not yet sent upstream are cancelled; sent ones are finished and
kept for a retry (see `flux_proxy/work/`). A replayed or cached answer streams the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Scope

from flux_proxy.api.generate import failure_of
from flux_proxy.api.middleware import note
from flux_proxy.api.output import finish
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import store_image, stream_event
from flux_proxy.api.work_options import first_look_headers
from flux_proxy.errors import ApiError
from flux_proxy.work.first_look import UNKNOWN, FirstLook
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


async def image_stream(
    services,
    image_request: ImageRequest,
    *,
    edit: bool,
    request_id: str,
    base_url: str,
    scope: Scope,
    options: dict,
) -> StreamingResponse:
    """Start the work (`ImageWork.produce`, each image as it is ready), wait for its first
    look, and answer with the event stream, its headers saying what that look found. Raises
    the ApiError of work refused before its first look, while it can still be the status."""
    ready: asyncio.Queue[MadeImage] = asyncio.Queue()
    looked: asyncio.Future[FirstLook] = asyncio.get_running_loop().create_future()
    work = asyncio.ensure_future(
        services.work.produce(
            image_request,
            request_id=request_id,
            on_image=ready.put_nowait,
            on_first_look=looked.set_result,
            **options,
        )
    )
    # Retrieve every outcome, so a failure after a hang-up is not logged as lost.
    work.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        # Store reads only; bounded all the same, so a slow store still gets the first
        # keep-alive out within the interval (then without the two headers).
        await asyncio.wait(
            {looked, work},
            timeout=services.settings.stream_keepalive_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )
    except BaseException:
        work.cancel()
        raise
    if not looked.done() and work.done() and not work.cancelled():
        refused = work.exception()
        if isinstance(refused, ApiError):
            raise refused
    look = looked.result() if looked.done() else UNKNOWN
    events = image_events(
        services,
        image_request,
        work,
        ready,
        created=look.created,
        edit=edit,
        request_id=request_id,
        base_url=base_url,
        scope=scope,
    )
    return _WorkStream(work, events, headers={**SSE_HEADERS, **first_look_headers(look)})


class _WorkStream(StreamingResponse):
    """An event stream that cancels its work however the response ends, even when the caller
    left before the body was first read (the body's own `finally` never runs then)."""

    def __init__(self, work: asyncio.Future, events: AsyncIterator[bytes], headers: dict):
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.work = work

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.work.cancel()  # done work: nothing; else unsent images go, sent ones finish


async def image_events(
    services,
    image_request: ImageRequest,
    work: asyncio.Future,
    ready: asyncio.Queue[MadeImage],
    *,
    created: int | None,
    edit: bool,
    request_id: str,
    base_url: str,
    scope: Scope,
) -> AsyncIterator[bytes]:
    """The SSE body of `work`, whose images arrive in `ready`, stamped `created` (a replay's)
    or as each is ready. Never raises: every failure becomes an error event."""
    event_name = "image_edit.completed" if edit else "image_generation.completed"
    made = 0
    try:
        yield KEEPALIVE
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
            output = await finish(image.image, image_request, image.seed, cached=image.cached)
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
                created_at=created or int(services.clock.now()),
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
