"""Batches: OpenAI's Batch API over the account pool. This module holds what a batch *is*:
its input validated up front, its document (the OpenAI batch object plus what the runner
needs) and its output lines. `batch_estimates.py` holds the accounts' room and the
estimates; `batch_runner.py` works the lines.

A batch is a document of kind `batch` in the state store; its lines are the store's batch
lines (see `StateStore.add_lines`). Statuses follow OpenAI: `validating` (only while the
POST is checking the file), `failed` (a bad line: nothing was queued, nothing spent),
`in_progress`, `finalizing` → `completed`, `expired`, `cancelling` → `cancelled`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from flux_proxy.api.body import RawRequest, UploadedFile
from flux_proxy.api.caller import Caller
from flux_proxy.api.parse import ImageRequest, build_image_request
from flux_proxy.errors import ApiError, invalid
from flux_proxy.keys.quota import model_not_allowed
from flux_proxy.settings import Settings
from flux_proxy.work.files import IMAGE_PURPOSES, FileStore

BATCH_KIND = "batch"
# One small document per batch that still has work (in_progress, cancelling, finalizing), so a
# runner's look at the batches costs what is active, not every batch ever made.
ACTIVE_KIND = "batch-active"
ENDPOINTS = {"/v1/images/generations": False, "/v1/images/edits": True}  # -> is an edit
ACTIVE = ("in_progress", "cancelling", "finalizing")
_WINDOW = re.compile(r"^\s*(\d{1,4})\s*([hd])\s*$")
MAX_WINDOW = 30 * 86400
MAX_REPORTED_ERRORS = 1000
# Fields of the stored document that are the proxy's own, never shown.
_INTERNAL = (
    "owner",
    "base_url",
    "line_neurons",
    "cheapest_line_neurons",
    "line_images",
    "typical_seconds",
    "finalizer_until",
    "sort_key",
    "output_ttl",
)


def completion_window(value: Any) -> tuple[int, str]:
    """`24h` as OpenAI has it, and longer windows (`48h`, `72h`, `7d`, ... up to `30d`):
    (seconds, the window as it is stored and shown, e.g. " 24h " → "24h")."""
    match = _WINDOW.match(value) if isinstance(value, str) else None
    seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 86400) if match else 0
    if not 86400 <= seconds <= MAX_WINDOW:
        raise invalid(
            "completion_window must be '24h', or a longer window such as '48h', '72h' or '7d' "
            "(at most 30d)",
            param="completion_window",
        )
    return seconds, f"{int(match.group(1))}{match.group(2)}"


def line_owner(caller: Caller) -> Caller:
    """Whom a batch's lines are checked as: their owner's own, as the runner will run them
    (an admin's line cannot name another key's image file, which the runner could not read).
    Creating a batch and estimating one both check lines so."""
    return replace(caller, role="user")


# --- lines ------------------------------------------------------------------------------------


async def line_request(
    body: Any, settings: Settings, *, edit: bool, files: FileStore, owner: Caller
) -> ImageRequest:
    """A line's `body` → the ImageRequest the live endpoint would have built from it.

    Edits lines carry their images as `data:` URLs in `images` (like the JSON edits body) or
    as ids of uploaded files (`purpose` vision or user_data) in `image_file_ids`.
    """
    if not isinstance(body, dict):
        raise invalid("body must be a JSON object", param="body")
    fields = dict(body)
    if fields.get("stream"):
        raise invalid("batch lines cannot stream; leave out stream", param="stream")
    uploads: list[UploadedFile] = []
    file_ids = fields.pop("image_file_ids", None)
    if file_ids is not None:
        if not isinstance(file_ids, list) or not all(isinstance(i, str) for i in file_ids):
            raise invalid("image_file_ids must be a list of file ids", param="image_file_ids")
        for file_id in file_ids:
            try:
                data, doc = await files.content(file_id, owner)
            except ApiError:
                raise invalid(
                    f"no such file {file_id[:80]!r}", param="image_file_ids", code="file_not_found"
                ) from None
            if doc["purpose"] not in IMAGE_PURPOSES:
                raise invalid(
                    f"file {file_id[:80]} has purpose {doc['purpose']!r}; reference images "
                    "are uploaded with purpose 'vision' or 'user_data'",
                    param="image_file_ids",
                )
            uploads.append(UploadedFile("image[]", doc["filename"], doc["content_type"], data))
    try:
        request = await build_image_request(RawRequest(fields, uploads), settings, edit=edit)
    except ApiError as error:
        if edit and error.param == "image" and error.code == "missing_required_parameter":
            # The live endpoint names its form fields; a line names its images like this.
            error.message = (
                "an image to edit is required: images (a list of data: URLs) or "
                "image_file_ids (files uploaded with purpose 'vision' or 'user_data')"
            )
            error.param = "images"
        raise
    if not owner.may_use(request.job.model.id):  # as the live endpoint refuses it, up front
        raise model_not_allowed(owner, request.job.model)
    return request


def input_lines(data: bytes) -> list[str]:
    """A JSONL file's lines, split at "\n" only (then "\r" dropped): `str.splitlines` would
    also split inside JSON strings at U+2028, U+2029 or U+0085, which JSON leaves unescaped
    (JavaScript's JSON.stringify writes them raw). A leading byte-order mark (Notepad's
    "UTF-8") is not part of the first line."""
    return [line.removesuffix("\r") for line in data.decode("utf-8-sig").split("\n")]


@dataclass
class CheckedInput:
    payloads: list[str]  # each line's JSON text, in order
    errors: list[dict]  # OpenAI's errors.data[]: code, message, param, line (from 1)
    neurons: list[float]  # each line's estimated price (all of its n images)
    typical_seconds: float
    models: set[str] = field(default_factory=set)  # the models the lines run on, by id
    numbers: list[int] = field(default_factory=list)  # each payload's line number (from 1)
    images: list[int] = field(default_factory=list)  # each line's n (for its key's quota)


async def check_input(
    data: bytes, endpoint: str, settings: Settings, files: FileStore, owner: Caller
) -> CheckedInput:
    """Every line, checked as the live endpoint would check it, before anything is queued."""
    edit = ENDPOINTS[endpoint]
    checked = CheckedInput([], [], [], 0.0)
    seen: set[str] = set()
    lines = input_lines(data)
    if len([line for line in lines if line.strip()]) > settings.batch_max_lines:
        checked.errors.append(
            error_entry(None, "too_many_lines", f"at most {settings.batch_max_lines} lines", None)
        )
        return checked
    seconds = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            request = await _check_line(text, number, endpoint, edit, seen, settings, files, owner)
        except ApiError as error:
            if len(checked.errors) < MAX_REPORTED_ERRORS:
                checked.errors.append(
                    error_entry(number, error.code or "invalid_request", error.message, error.param)
                )
            continue
        checked.payloads.append(text)
        checked.numbers.append(number)
        checked.neurons.append(max(request.job.estimated_neurons(), 1.0) * request.n)
        checked.images.append(request.n)
        seconds.append(request.job.model.typical_seconds)
        checked.models.add(request.job.model.id)
    if not checked.payloads and not checked.errors:
        checked.errors.append(error_entry(None, "empty_file", "the input file has no lines", None))
    checked.typical_seconds = sum(seconds) / len(seconds) if seconds else 0.0
    return checked


async def _check_line(
    text: str,
    number: int,
    endpoint: str,
    edit: bool,
    seen: set[str],
    settings: Settings,
    files: FileStore,
    owner: Caller,
) -> ImageRequest:
    try:
        line = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise invalid("the line is not valid JSON", param=None, code="invalid_json") from None
    if not isinstance(line, dict):
        raise invalid("each line must be a JSON object", param=None, code="invalid_json")
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise invalid("custom_id must be a non-empty string", param="custom_id")
    if custom_id in seen:
        raise invalid(
            f"custom_id {custom_id[:80]!r} appears more than once",
            param="custom_id",
            code="duplicate_custom_id",
        )
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise invalid("method must be 'POST'", param="method")
    if line.get("url") != endpoint:
        raise invalid(f"url must be the batch's endpoint, {endpoint}", param="url")
    request = await line_request(line.get("body"), settings, edit=edit, files=files, owner=owner)
    _check_key_day(request, owner)
    return request


def _check_key_day(request: ImageRequest, owner: Caller) -> None:
    """A line bigger than its key's whole daily quota: queued, it would rest day after day
    (the quota refuses it every day) until the batch expired."""
    images, neurons = request.n, request.n * request.job.estimated_neurons()
    over_images = owner.daily_images is not None and images > owner.daily_images
    over_neurons = owner.daily_neurons is not None and neurons > owner.daily_neurons
    if over_images or over_neurons:
        raise invalid(
            f"this line asks for {images} image(s), about {neurons:,.0f} neurons: more than "
            f"this key's whole day (daily_images {owner.daily_images}, daily_neurons "
            f"{owner.daily_neurons})",
            param="n",
            code="exceeds_key_quota",
        )


def error_entry(line: int | None, code: str, message: str, param: str | None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


# --- the document -----------------------------------------------------------------------------


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def output_file_ids(batch_id: str) -> tuple[str, str]:
    """The output and error files' ids, fixed by the batch: assembling twice overwrites."""
    suffix = batch_id.removeprefix("batch_")
    return f"file-out-{suffix}", f"file-err-{suffix}"


# Characters JSON leaves raw in strings but `str.splitlines` splits at (as does the README's
# `files.content(id).text.splitlines()`): escaped in output lines, which mean the same.
_LINE_BREAKERS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def output_line(result: dict) -> str:
    """One line of an output or error file: JSON that every line splitter keeps whole."""
    return orjson.dumps(result).decode().translate(_LINE_BREAKERS)


def public_batch(doc: dict, counts: dict | None = None) -> dict:
    """OpenAI's batch object (plus the documented extensions) from the stored document."""
    body = {key: value for key, value in doc.items() if key not in _INTERNAL}
    if counts is not None:
        body["request_counts"] = request_counts(doc["request_counts"]["total"], counts)
        body["neurons_used"] = round(counts["neurons"], 2)
    return body


def request_counts(total: int, counts: dict) -> dict:
    return {
        "total": total,
        "completed": counts["completed"],
        "failed": counts["failed"],
        # Extensions: lines that ran out of time or were cancelled before they ran.
        "expired": counts["expired"],
        "cancelled": counts["cancelled"],
    }


def finished_lines(counts: dict) -> int:
    return counts["completed"] + counts["failed"] + counts["expired"] + counts["cancelled"]


def unsupported_endpoint(endpoint: Any) -> ApiError:
    return invalid(
        f"endpoint {str(endpoint)[:80]!r} is not served here; batches run "
        "/v1/images/generations or /v1/images/edits",
        param="endpoint",
        code="unsupported_endpoint",
    )
