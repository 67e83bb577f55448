"""What the MCP tools do, apart from how MCP declares them (`server.py`).

Image tools build the same `ImageRequest` the HTTP API builds (`build_image_request`), hand it
to `work.make_images`, and answer with one preview per image plus a text part naming the seed,
the account, the neurons and the URL of the full-size original. A failure is a tool error
whose text is the message an OpenAI client would get.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from mcp.types import CallToolResult, ImageContent, TextContent

from flux_proxy.api.output import OutputImage
from flux_proxy.api.parse import ImageRequest, build_image_request
from flux_proxy.api.render import store_image
from flux_proxy.errors import ApiError, invalid
from flux_proxy.logs import log_event
from flux_proxy.mcp import inputs
from flux_proxy.mcp.context import ToolContext
from flux_proxy.mcp.preview import Preview, make_preview
from flux_proxy.mcp.progress import Report, with_progress
from flux_proxy.mcp.work import Made, make_images
from flux_proxy.pool import AccountPool

# --- the image tools ---------------------------------------------------------------------------


async def image_tool(
    tc: ToolContext,
    report: Report,
    *,
    tool: str,
    edit: bool,
    fields: dict[str, Any],
    references: Any,
    references_param: str,
    mask: Any = None,
) -> CallToolResult:
    """Validate, make and answer one `generate_image` / `edit_image` call."""
    started = time.monotonic()
    svc = tc.services
    image_request: ImageRequest | None = None
    try:
        plain = inputs.image_arguments(**fields)
        if edit and not references:
            raise invalid(
                "an image to edit is required: images, a list of data: URLs or this proxy's "
                "image URLs",
                param="images",
                code="missing_required_parameter",
            )
        own_images = [svc.images] + ([svc.batches.images] if svc.batches is not None else [])
        resolve = {
            "images": own_images,
            "max_bytes": svc.settings.max_image_bytes,
            "local_files": tc.local_files,
        }
        try:
            images = await inputs.as_data_urls(references, param=references_param, **resolve)
            mask_url = await inputs.as_data_urls(mask, param="mask", **resolve)
            raw = inputs.raw_request(plain, images=images, mask=mask_url)
            image_request = await build_image_request(raw, svc.settings, edit=edit)
        except ApiError as error:
            raise inputs.renamed(error, "images", references_param) from None
        made = await with_progress(
            make_images(svc, image_request, request_id=tc.request_id, caller=tc.caller),
            report,
            image_request,
            interval=svc.settings.mcp_progress_interval,
        )
        outcome = made.outcome
        result = await _answer(tc, image_request, made)
    except ApiError as error:
        _log_call(tc, tool, started, status=error.status, code=error.code)
        if error.code == "accounts_exhausted" and image_request is not None:
            error = await _smaller_fits_now(tc, image_request, error)
        return tool_error(error)
    except Exception as error:  # ours to log, never to show
        log_event(
            "mcp_tool_failed",
            logging.ERROR,
            request_id=tc.request_id,
            tool=tool,
            error=type(error).__name__,
        )
        message = f"internal error; quote request id {tc.request_id} when reporting it"
        return tool_error(ApiError(500, message, code="internal_error"))
    model = image_request.job.model.short_name
    svc.metrics.child(svc.metrics.images, model, "mcp").inc(len(outcome.images))
    _log_call(
        tc,
        tool,
        started,
        status=200,
        model=model,
        n=image_request.n,
        account=outcome.images[0][1].image.account,
        failed=len(outcome.errors) or None,
    )
    return result


def tool_error(error: ApiError) -> CallToolResult:
    """An MCP tool error: the OpenAI message as its text, the whole OpenAI error (and the
    HTTP status it would have had) as structured content for programs."""
    return CallToolResult(
        content=[TextContent(type="text", text=error.message)],
        structured_content={"status": error.status, **error.body()},
        is_error=True,
    )


async def _smaller_fits_now(tc: ToolContext, request: ImageRequest, error: ApiError) -> ApiError:
    """The pool's 429 says when an account is usable again; when accounts can serve now, only
    not an image this large, an agent reading "until 00:00 UTC" would give up: say so."""
    entries = await tc.services.pool.snapshot()
    left = [
        entry["neurons_remaining_today"]
        for entry in entries
        if AccountPool.is_usable_now(entry) and entry["neurons_remaining_today"] is not None
    ]
    needed = request.job.estimated_neurons()
    if not left or max(left) >= needed:
        return error
    hint = (
        f". No account has the {needed:,.0f} neurons one image of this request needs today (the "
        f"most left on one is {max(left):,.0f}); a smaller size, fewer steps or a cheaper model "
        "(see list_models) can be made now."
    )
    return ApiError(
        error.status,
        error.message.rstrip(".") + hint,
        type=error.type,
        param=error.param,
        code=error.code,
        headers=error.headers,
    )


async def _answer(tc: ToolContext, request: ImageRequest, made: Made) -> CallToolResult:
    svc = tc.services
    outcome = made.outcome
    settings = svc.settings
    budget = settings.mcp_image_max_bytes // max(1, len(outcome.images))
    content: list[ImageContent | TextContent] = []
    lines: list[str] = []
    entries: list[dict[str, Any]] = []
    for index, output in outcome.images:
        url = await store_image(output, svc.images, tc.base_url)
        preview = await asyncio.to_thread(
            make_preview, output.image.data, output.image.mime, settings.mcp_image_format, budget
        )
        content.append(
            ImageContent(
                type="image",
                data=base64.b64encode(preview.data).decode("ascii"),
                mime_type=preview.mime,
            )
        )
        cached = index in made.cached
        lines.append(_describe(index, request, output, url, preview, tc, cached=cached))
        entries.append(
            {
                "index": index,
                "seed": output.seed,
                "account": output.image.account,
                "neurons": 0.0 if cached else output.image.neurons,
                "cached": cached,
                "url": url,
                "width": output.width,
                "height": output.height,
                "mime_type": output.image.mime,
                "preview": {
                    "mime_type": preview.mime,
                    "width": preview.width,
                    "height": preview.height,
                },
            }
        )
    for index, error in outcome.errors:
        lines.append(f"Image {index + 1} of {request.n} failed: {error.message}")
    neurons = [e["neurons"] for e in entries if e["neurons"] is not None]
    if neurons:
        lines.append(f"Neurons spent: {round(sum(neurons), 2)}.")
    content.append(TextContent(type="text", text="\n".join(lines)))
    structured = {
        "model": request.job.model.id,
        "prompt": request.prompt_text,
        "images": entries,
        "errors": [{"index": index, **error.body()} for index, error in outcome.errors],
    }
    return CallToolResult(content=content, structured_content=structured)


def _describe(
    index: int,
    request: ImageRequest,
    output: OutputImage,
    url: str,
    preview: Preview,
    tc: ToolContext,
    *,
    cached: bool,
) -> str:
    image = output.image
    facts = [f"model {request.job.model.short_name}"]
    if output.size:
        facts.append(output.size)
    if output.seed is not None:
        facts.append(f"seed {output.seed}")
    facts.append(f"account {image.account}")
    if cached:
        facts.append("from the seeded cache, no neurons spent")
    elif image.neurons is not None:
        facts.append(f"{round(image.neurons, 2)} neurons")
    ttl = tc.services.settings.image_ttl_seconds
    where = url
    if not tc.base_url:  # stdio without PUBLIC_BASE_URL: a proxy on the same state serves it
        where += " (on a proxy sharing this state; PUBLIC_BASE_URL makes it a full URL)"
    return (
        f"Image {index + 1} of {request.n}: {', '.join(facts)}.\n"
        f"Full-size original ({image.extension.upper()}, {len(image.data)} bytes, kept {ttl} s): "
        f"{where}. Pass this URL in reference_images or images to build on it.\n"
        + (
            "The image above is the original."
            if preview.original
            else f"The image above is a {preview.width}x{preview.height} "
            f"{preview.mime.removeprefix('image/').upper()} preview."
        )
    )


def _log_call(tc: ToolContext, tool: str, started: float, **fields: object) -> None:
    log_event(
        "mcp_tool",
        request_id=tc.request_id,
        tool=tool,
        caller=tc.caller.name,
        latency_ms=round((time.monotonic() - started) * 1000, 1),
        **fields,
    )
