"""`submit_batch` and `batch_status`: many images, no hurry, for agents.

A thin translation onto the same Files and Batch services the HTTP API uses
(`flux_proxy/work/batch_service.py`): the prompts become one JSONL input file owned by the
calling key, the batch drains across the accounts' budgets over as many days as it takes, and
the status answers with the finished lines' image URLs (batch answers are URLs by default).
"""

from __future__ import annotations

from typing import Any

import orjson

from flux_proxy.clock import iso
from flux_proxy.errors import ApiError, invalid
from flux_proxy.mcp.context import ToolContext
from flux_proxy.mcp.tools import tool_error

MAX_PROMPTS = 1000  # an agent's batch; bigger ones belong in a JSONL file over the HTTP API
ENDPOINT = "/v1/images/generations"


def _parts(tc: ToolContext) -> Any:
    parts = tc.services.batches
    if parts is None:
        raise ApiError(503, "batches are not running in this process", code="batches_unavailable")
    return parts


def input_lines(prompts: Any, options: dict[str, Any]) -> bytes:
    """The JSONL input: one line a prompt, `custom_id` its 1-based position (`0001`, ...)."""
    if not isinstance(prompts, list) or not prompts:
        raise invalid("prompts must be a non-empty list of prompts", param="prompts")
    if len(prompts) > MAX_PROMPTS:
        raise invalid(f"at most {MAX_PROMPTS} prompts in one batch", param="prompts")
    body = {name: value for name, value in options.items() if value is not None}
    width = max(4, len(str(len(prompts))))
    lines = [
        orjson.dumps(
            {
                "custom_id": str(index).zfill(width),
                "method": "POST",
                "url": ENDPOINT,
                "body": {**body, "prompt": prompt},
            }
        )
        for index, prompt in enumerate(prompts, start=1)
    ]
    return b"\n".join(lines) + b"\n"


def summary(batch: dict[str, Any]) -> dict[str, Any]:
    """What an agent needs of the batch object: where it stands and when it should be done."""
    done_at = batch.get("estimated_completion_at")
    return {
        "id": batch["id"],
        "status": batch["status"],
        "request_counts": batch.get("request_counts"),
        "estimated_neurons": batch.get("estimated_neurons"),
        "neurons_used": batch.get("neurons_used"),
        "estimated_completion_at": iso(done_at) if done_at else None,
        "expires_at": iso(batch["expires_at"]) if batch.get("expires_at") else None,
        "errors": (batch.get("errors") or {}).get("data") or None,
    }


async def submit(tc: ToolContext, prompts: Any, options: dict[str, Any], window: Any) -> Any:
    try:
        parts = _parts(tc)
        data = input_lines(prompts, options)
        uploaded = await parts.files.upload(tc.caller.name, "mcp-batch.jsonl", "batch", data)
        batch = await parts.service.create(
            tc.caller,
            {
                "input_file_id": uploaded["id"],
                "endpoint": ENDPOINT,
                "completion_window": window or "24h",
                "metadata": {"source": "mcp"},
            },
            tc.base_url,
        )
        if batch["status"] == "failed":  # validation refused a line: nothing was queued
            raise refused(batch)
    except ApiError as error:
        return tool_error(error)
    return summary(batch)


def refused(batch: dict[str, Any]) -> ApiError:
    """A batch that validation failed, as the tool error an agent can act on: which prompt
    (1-based) and what is wrong with it, the live endpoint's own message."""
    errors = (batch.get("errors") or {}).get("data") or [{}]
    first = errors[0]
    where = f"prompt {first['line']}: " if first.get("line") else ""
    message = first.get("message") or "the batch was refused"
    return ApiError(400, where + message, param=first.get("param"), code=first.get("code"))


async def status(tc: ToolContext, batch_id: Any) -> Any:
    try:
        if not isinstance(batch_id, str) or not batch_id:
            raise invalid("batch_id is required", param="batch_id")
        parts = _parts(tc)
        batch = await parts.service.get(tc.caller, batch_id)
        answer = summary(batch)
        for field, name in (("output_file_id", "images"), ("error_file_id", "failed")):
            if batch.get(field):
                data, _ = await parts.files.content(batch[field], tc.caller)
                answer[name] = [_line(orjson.loads(raw)) for raw in data.splitlines() if raw]
    except ApiError as error:
        return tool_error(error)
    return answer


def _line(line: dict[str, Any]) -> dict[str, Any]:
    if line.get("error"):
        return {"custom_id": line.get("custom_id"), "error": line["error"].get("message")}
    entries = line["response"]["body"]["data"]
    return {
        "custom_id": line.get("custom_id"),
        "urls": [entry["url"] for entry in entries if entry.get("url")],
    }
