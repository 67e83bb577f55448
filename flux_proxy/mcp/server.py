"""The MCP server: the official SDK's `MCPServer` with flux-proxy's tools.

One server definition serves both transports; `resolve` says where a call's services and
caller come from (the HTTP request over `/mcp`, the process itself over stdio).

Argument schemas are declared for the model reading them (types, ranges, examples), but the
SDK is told to accept any value: the rules live in the HTTP API's validator, so a bad value
gets the same message an OpenAI client would get, not a pydantic one.
"""

# No `from __future__ import annotations`: the SDK reads the tools' argument types at run time,
# and they are local to `build_mcp_server`.

import logging
from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import WithJsonSchema

from flux_proxy import __version__
from flux_proxy.errors import invalid
from flux_proxy.mcp import batches as mcp_batches
from flux_proxy.mcp import listings, tools
from flux_proxy.mcp.context import ToolContext
from flux_proxy.mcp.inputs import MAX_N
from flux_proxy.mcp.tools import tool_error
from flux_proxy.models import MODELS, find_model
from flux_proxy.settings import Settings

Resolve = Callable[[Context], ToolContext]

INSTRUCTIONS = """\
Makes images with FLUX.2 and the other Cloudflare Workers AI image models, through a pool of
accounts with failover and daily neuron budgets. generate_image makes images from a prompt
(optionally guided by reference images); edit_image changes given images as the prompt says.
Each image comes back as a preview with a URL of the full-size original, which can be passed
back as a reference. list_models shows what each model takes and costs; account_status shows
how many neurons are left today. For many images with no hurry, submit_batch queues prompts that
are made as budgets allow (over days if needed); batch_status reports progress and the URLs."""

_REFERENCE_ITEM = (
    "a data: URL (data:image/png;base64,...), a URL of an image this proxy made "
    "(…/v1/images/files/<name>, as returned by these tools)"
)


def _loose(schema: dict[str, Any], description: str) -> Any:
    """An argument the SDK passes on as it came, advertised with `schema`."""
    return Annotated[Any, WithJsonSchema({**schema, "description": description})]


def _mask_description(settings: Settings, item: str) -> str:
    """What a mask means and who uses it: OpenAI's convention, and MASK_MODEL for the models
    that take none (so an agent does not switch models, or send a black-and-white mask)."""
    fallback = find_model(settings.mask_model) if settings.mask_model.strip() else None
    who = (
        f"a model that takes masks (the stable-diffusion ones) does the edit; with any other "
        f"model, or none, the edit goes to {fallback.short_name}"
        if fallback is not None and fallback.takes_mask
        else "only the models that take masks (the stable-diffusion ones) accept one"
    )
    return (
        "Where to repaint, as OpenAI edit masks say it: a PNG the size of the first image, "
        "with an alpha channel, whose fully transparent pixels are repainted and the rest kept; "
        f"{who}. It is {item}."
    )


def build_mcp_server(settings: Settings, resolve: Resolve, *, local_files: bool) -> MCPServer:
    default = find_model(settings.default_model, settings.model_aliases)
    default_name = default.short_name if default else settings.default_model
    names = ", ".join(spec.short_name for spec in MODELS)
    item = _REFERENCE_ITEM + (", or a local file path" if local_files else "")

    Prompt = _loose(
        {"anyOf": [{"type": "string"}, {"type": "object"}]},
        'What to draw: plain text, or a FLUX.2 JSON prompt object (e.g. {"scene": ..., '
        '"subjects": [...], "style": ..., "color_palette": [...]}) for precise control.',
    )
    Model = _loose(
        {"type": "string"},
        f"Model short name or @cf/... id (see list_models); default {default_name}. "
        f"One of: {names}.",
    )
    Size = _loose(
        {"type": "string", "pattern": r"^(auto|\d+x\d+)$", "examples": ["1024x1024", "1024x768"]},
        "WIDTHxHEIGHT in pixels, e.g. 1024x768; FLUX.2 takes 256-1920 per side. Leave out for "
        "the model's default size.",
    )
    Steps = _loose(
        {"type": "integer", "minimum": 1, "maximum": 50},
        "Diffusion steps (flux-2-dev: 1-50, default 25; more is slower and costs more). Leave "
        "out for klein models, which always run 4.",
    )
    Seed = _loose(
        {"type": "integer", "minimum": 0},
        "Seed for a repeatable image; image i of n uses seed+i. Leave out for a random one "
        "(the answer says which was used).",
    )
    Count = _loose(
        {"type": "integer", "minimum": 1, "maximum": MAX_N},
        f"How many images to make at once, 1-{MAX_N} (default 1).",
    )
    References = _loose(
        {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        f"Up to 4 images for FLUX.2 to take subjects, style or layout from; each {item}.",
    )
    Images = _loose(
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        f"The image(s) to edit, first one first (1-4); each {item}.",
    )
    Mask = _loose({"type": "string"}, _mask_description(settings, item))

    image_annotations = ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
    )

    async def generate_image(
        ctx: Context,
        prompt: Prompt = None,
        model: Model = None,
        size: Size = None,
        steps: Steps = None,
        seed: Seed = None,
        n: Count = None,
        reference_images: References = None,
    ) -> CallToolResult:
        return await tools.image_tool(
            resolve(ctx),
            ctx.report_progress,
            tool="generate_image",
            edit=False,
            fields={
                "prompt": prompt,
                "model": model,
                "size": size,
                "steps": steps,
                "seed": seed,
                "n": n,
            },
            references=reference_images,
            references_param="reference_images",
        )

    async def edit_image(
        ctx: Context,
        prompt: Prompt = None,
        images: Images = None,
        mask: Mask = None,
        model: Model = None,
        size: Size = None,
        steps: Steps = None,
        seed: Seed = None,
        n: Count = None,
    ) -> CallToolResult:
        return await tools.image_tool(
            resolve(ctx),
            ctx.report_progress,
            tool="edit_image",
            edit=True,
            fields={
                "prompt": prompt,
                "model": model,
                "size": size,
                "steps": steps,
                "seed": seed,
                "n": n,
            },
            references=images,
            references_param="images",
            mask=mask,
        )

    async def list_models(ctx: Context) -> dict[str, Any]:
        return listings.models_listing(resolve(ctx))

    async def account_status(ctx: Context) -> dict[str, Any]:
        return await listings.account_report(resolve(ctx))

    Prompts = _loose(
        {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"type": "object"}]},
            "minItems": 1,
            "maxItems": mcp_batches.MAX_PROMPTS,
        },
        "One prompt per image (text or FLUX.2 JSON prompt objects); line i is named by its "
        "position, 0001, 0002, ...",
    )
    Window = _loose(
        {"type": "string", "examples": ["24h", "72h", "7d"]},
        "How long the batch may take (default 24h). A free account makes a few images a day, "
        "so large batches want 72h or 7d; unfinished lines expire after it.",
    )
    BatchId = _loose({"type": "string"}, "The id submit_batch returned (batch_...).")

    async def submit_batch(
        ctx: Context,
        prompts: Prompts = None,
        model: Model = None,
        size: Size = None,
        steps: Steps = None,
        completion_window: Window = None,
    ) -> dict[str, Any]:
        options = {"model": model, "size": size, "steps": steps}
        return await mcp_batches.submit(resolve(ctx), prompts, options, completion_window)

    async def batch_status(ctx: Context, batch_id: BatchId = None) -> dict[str, Any]:
        return await mcp_batches.status(resolve(ctx), batch_id)

    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    return _quiet_server(
        [
            _tool(
                generate_image,
                "Generate an image",
                "Make 1-4 images from a prompt with FLUX.2 (or another model, see list_models). "
                "Returns each image as a preview plus text with its seed, the account and "
                "neurons used, and the URL of the full-size original. Takes about 5-30 s.",
                image_annotations,
                required=["prompt"],
            ),
            _tool(
                edit_image,
                "Edit an image",
                "Change one or more given images as the prompt says (e.g. 'make the sky "
                "stormy', 'put the cat from image 2 on the sofa in image 1'). Answers like "
                "generate_image.",
                image_annotations,
                required=["prompt", "images"],
            ),
            _tool(
                list_models,
                "List image models",
                "The image models this proxy serves to this key: ids, what each takes (sizes, "
                "steps, seed, reference images, mask) and its price in neurons per 1024x1024 "
                "image.",
                read_only,
            ),
            _tool(
                account_status,
                "Account status",
                "Whether an account can serve now, neurons left today and when budgets reset "
                "(00:00 UTC); with an admin key also each Cloudflare account's state "
                "(available, cooling, parked until the daily reset, disabled) and neurons used.",
                read_only,
            ),
            _tool(
                submit_batch,
                "Submit a batch of images",
                "Queue many prompts as one batch (OpenAI's Batch API) that the proxy makes in "
                "the background as the accounts' daily budgets allow, over days if needed. "
                "Answers at once with the batch id, the estimated neurons and completion time; "
                "check on it with batch_status.",
                image_annotations,
                required=["prompts"],
            ),
            _tool(
                batch_status,
                "Batch status",
                "Where a batch stands (in_progress, completed, expired, ...), its counts and "
                "estimated completion, and the image URLs of every finished line by name.",
                read_only,
                required=["batch_id"],
            ),
        ]
    )


def _tool(
    fn: Callable[..., Any],
    title: str,
    description: str,
    annotations: ToolAnnotations,
    *,
    required: list[str] | None = None,
) -> Tool:
    tool = Tool.from_function(
        fn,
        title=title,
        description=description,
        annotations=annotations,
        # Image tools build their own CallToolResult; the listings answer a JSON object.
        structured_output=fn.__annotations__.get("return") is not CallToolResult,
    )
    for schema in tool.parameters.get("properties", {}).values():
        if schema.get("default", 0) is None:
            del schema["default"]  # "absent" is what None means; `null` is no integer
    if required:
        # Advertised as required; given Python defaults so that a missing one reaches the
        # validator and gets its message ("prompt is required"), not the SDK's.
        tool.parameters["required"] = required
    tool.parameters["additionalProperties"] = False  # refused by `_Server.call_tool`
    return tool


class _Server(MCPServer):
    """The SDK drops arguments a tool does not declare; refused here instead, before anything
    runs, so `width` or `image` (the HTTP API's fields) never make a paid image that ignores
    them."""

    def __init__(self, *args: Any, tools: list[Tool], **kwargs: Any) -> None:
        super().__init__(*args, tools=tools, **kwargs)
        self._arguments = {tool.name: list(tool.parameters.get("properties", {})) for tool in tools}

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> Any:
        known = self._arguments.get(name)
        unknown = [key for key in arguments if known is not None and key not in known]
        if not unknown:
            return await super().call_tool(name, arguments, context)
        hint = ""
        if {"width", "height"} & set(unknown) and "size" in known:
            hint = " (size is WIDTHxHEIGHT, e.g. 512x768)"
        message = (
            f"{name} takes no {', '.join(unknown)}; its arguments are {', '.join(known)}{hint}"
        )
        return tool_error(invalid(message, param=unknown[0], code="unknown_parameter"))


def _quiet_server(tool_list: list[Tool]) -> MCPServer:
    """`MCPServer` calls `logging.basicConfig` on the root logger; the proxy's own logging
    (stderr, LOG_FORMAT) must stay what `configure_logging` made it, so that is undone."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server = _Server(
        "flux-proxy",
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        tools=tool_list,
    )
    root.handlers[:] = handlers
    root.setLevel(level)
    return server
