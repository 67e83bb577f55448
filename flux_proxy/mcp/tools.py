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
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mcp.types import CallToolResult, ImageContent, TextContent

from flux_proxy.api.caller import Caller
from flux_proxy.api.output import OutputImage
from flux_proxy.api.parse import ImageRequest, build_image_request
from flux_proxy.api.render import store_image
from flux_proxy.api.routes import Services
from flux_proxy.clock import iso, next_utc_midnight
from flux_proxy.errors import ApiError, invalid
from flux_proxy.logs import log_event
from flux_proxy.mcp import inputs
from flux_proxy.mcp.preview import Preview, make_preview
from flux_proxy.mcp.work import Made, make_images
from flux_proxy.models import MODELS, ModelSpec, find_model
from flux_proxy.pool import AccountPool

# Workers AI's price beyond the free allocation (workers-ai.md), for `list_models`.
USD_PER_1000_NEURONS = 0.011

Report = Callable[[float, float | None, str | None], Awaitable[None]]
T = TypeVar("T")


@dataclass(frozen=True)
class ToolContext:
    """What a tool call runs with: the proxy's services and who is calling, from where."""

    services: Services
    caller: Caller
    request_id: str
    base_url: str  # for the originals' URLs; "" when unknown (stdio without PUBLIC_BASE_URL)
    local_files: bool  # stdio: references may be local file paths


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
    try:
        plain = inputs.image_arguments(**fields)
        if edit and not references:
            raise invalid(
                "an image to edit is required: images, a list of data: URLs or this proxy's "
                "image URLs",
                param="images",
                code="missing_required_parameter",
            )
        resolve = {
            "images": svc.images,
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


# --- progress ----------------------------------------------------------------------------------


async def with_progress(
    work: Awaitable[T], report: Report, request: ImageRequest, *, interval: float
) -> T:
    """Await `work`, sending progress (0-100) every `interval` seconds while it runs.

    Workers AI says nothing until an image is done, so progress is an estimate from the
    model's typical time at this size: it rises towards 90 and never passes it before the
    work ends (MCP requires each notification to carry a larger value than the last).
    """
    job = request.job
    typical = _typical_seconds(job.model, job.width, job.height)
    label = f"{request.n} image{'s' if request.n > 1 else ''} on {job.model.short_name}"
    task = asyncio.ensure_future(work)
    start = time.monotonic()
    last = 0.0
    try:
        await report(0.0, 100.0, f"making {label} (usually about {typical:.0f} s)")
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval)
            if done:
                break
            elapsed = time.monotonic() - start
            value = round(90.0 * (1.0 - math.exp(-elapsed / typical)), 1)
            if value > last:
                last = value
                await report(value, 100.0, f"making {label}: {elapsed:.0f} s so far")
        result = task.result()
        await report(100.0, 100.0, f"{label}: done")
        return result
    finally:
        if not task.done():
            task.cancel()  # the caller went away or cancelled: stop the upstream calls too


def _typical_seconds(model: ModelSpec, width: int | None, height: int | None) -> float:
    area = (width or model.default_width or 1024) * (height or model.default_height or 1024)
    return max(1.0, model.typical_seconds * area / (1024 * 1024))


# --- list_models and account_status -----------------------------------------------------------


def models_listing(tc: ToolContext) -> dict[str, Any]:
    settings = tc.services.settings
    default = find_model(settings.default_model, settings.model_aliases)
    return {
        "default_model": default.id if default else settings.default_model,
        "pricing_note": (
            "neurons are Cloudflare's unit; every account gets 10,000 free a day (reset 00:00 "
            f"UTC), paid usage beyond that costs ${USD_PER_1000_NEURONS} per 1,000"
        ),
        "models": [_model_entry(spec, spec is default) for spec in MODELS],
    }


def _model_entry(spec: ModelSpec, is_default: bool) -> dict[str, Any]:
    size, steps = spec.size_range, spec.steps_range
    width = 1024 if spec.takes_size else spec.default_width
    height = 1024 if spec.takes_size else spec.default_height
    neurons = spec.estimate_neurons(width, height, None)
    return {
        "id": spec.id,
        "short_name": spec.short_name,
        "default": is_default,
        "description": spec.description,
        "takes": {
            "size": f"{size.minimum}-{size.maximum} per side" if size else "fixed size only",
            "default_size": f"{spec.default_width}x{spec.default_height}",
            "steps": (
                f"{steps.minimum}-{steps.maximum} (default {spec.default_steps})"
                if steps
                else f"fixed at {spec.fixed_steps}"
                if spec.fixed_steps
                else "none"
            ),
            "seed": spec.takes_seed,
            "reference_images": spec.max_references,
            "mask": spec.takes_mask,
        },
        # The model table's estimate at default steps; Cloudflare bills what it measures.
        "price_per_1024x1024_image": {
            "size": f"{width}x{height}",
            "neurons": neurons if neurons else None,
            "usd_beyond_free": round(neurons * USD_PER_1000_NEURONS / 1000, 5) if neurons else None,
        },
        "typical_seconds": spec.typical_seconds,
    }


async def account_report(tc: ToolContext) -> dict[str, Any]:
    svc = tc.services
    entries = await svc.pool.snapshot()
    now = svc.clock.now()
    usable = [e for e in entries if AccountPool.is_usable_now(e)]
    budgeted = [e["neurons_remaining_today"] for e in entries if e["daily_budget"] is not None]
    summary = f"{len(usable)} of {len(entries)} accounts can serve now"
    if budgeted:
        summary += f"; {round(sum(budgeted), 2)} neurons left today on budgeted accounts"
    if not usable and entries:
        returns = sorted(e["until"] or e["next_reset"] for e in entries if e["state"] != "disabled")
        summary += (
            f"; the first is usable again at {returns[0]}"
            if returns
            else ("; every token was rejected")
        )
    return {
        "summary": summary,
        "usable_now": bool(usable),
        "next_reset": iso(next_utc_midnight(now)),
        "accounts": [
            {
                "number": e["number"],
                "account": e["account"],
                "state": e["state"],
                "until": e["until"],
                "reason": e["reason"],
                "neurons_used_today": e["neurons_used_today"],
                "neurons_left_today": e["neurons_remaining_today"],
                "daily_budget": e["daily_budget"],
                "in_flight": e["in_flight"],
            }
            for e in entries
        ],
    }
