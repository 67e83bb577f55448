"""Where reference images come from: seed-style files `input_image_0..3`, OpenAI's `image` /
`image[]` files, and `images` data URLs in JSON (never fetched URLs); and an edit's `mask`
(a file, or a data URL in JSON). Each is size-checked here; decoding, checking and scaling
happen in worker threads (`flux_proxy.images`, `flux_proxy.masks`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from flux_proxy.api.body import RawRequest, UploadedFile
from flux_proxy.api.schemas import FILE_FIELDS
from flux_proxy.errors import invalid, too_large
from flux_proxy.images import prepare_reference
from flux_proxy.job import ReferenceImage
from flux_proxy.models import ModelSpec
from flux_proxy.settings import Settings

_INPUT_IMAGE = re.compile(r"^input_image_(\d+)$")
_IMAGE_FIELDS = ("image", "image[]", "images", "images[]")


@dataclass(frozen=True)
class PendingImage:
    param: str  # the name the caller used, for error messages
    data: bytes


def collect_images(raw: RawRequest, settings: Settings) -> list[PendingImage]:
    """Reference images in order: input_image_0..N first (seed style), then image/image[]."""
    numbered: list[tuple[int, PendingImage]] = []
    named: list[PendingImage] = []
    for upload in raw.files:
        pending = _pending_file(upload, settings)
        if match := _INPUT_IMAGE.match(upload.field):
            numbered.append((int(match.group(1)), pending))
        elif upload.field in _IMAGE_FIELDS:
            named.append(pending)
        elif upload.field not in FILE_FIELDS:
            raise invalid(f"unexpected file field {upload.field[:50]!r}", param=upload.field[:50])
    for name, value in raw.fields.items():
        # The seed's names sent as text (a JSON body, or a form field that is not a file): a
        # data: URL is a reference like any other; anything else is refused, never dropped.
        if (match := _INPUT_IMAGE.match(name)) and value is not None and value != "":
            numbered.append((int(match.group(1)), _pending_data_url(value, name, settings)))
    for name in _IMAGE_FIELDS:
        value = raw.fields.get(name)
        if value is None or value == "":
            continue
        items = value if isinstance(value, list) else [value]
        param = name.removesuffix("[]")
        named.extend(_pending_data_url(item, param, settings) for item in items)
    numbered.sort(key=lambda pair: pair[0])
    return [pending for _, pending in numbered] + named


def collect_mask(raw: RawRequest, settings: Settings) -> PendingImage | None:
    """The edit's mask: one `mask` file, or a data URL in a JSON body's `mask`."""
    masks = [_pending_file(upload, settings) for upload in raw.files if upload.field == "mask"]
    value = raw.fields.get("mask")
    if value is not None and value != "":
        masks.append(_pending_data_url(value, "mask", settings))
    if len(masks) > 1:
        raise invalid("send at most one mask", param="mask")
    return masks[0] if masks else None


def _pending_file(upload: UploadedFile, settings: Settings) -> PendingImage:
    param = upload.field.removesuffix("[]")
    if len(upload.data) > settings.max_image_bytes:
        raise too_large(
            f"{param}: image is {len(upload.data)} bytes; the limit is {settings.max_image_bytes}",
            param=param,
        )
    if not upload.data:
        raise invalid(f"{param}: the file is empty", param=param)
    return PendingImage(param, upload.data)


def _pending_data_url(item: Any, param: str, settings: Settings) -> PendingImage:
    if isinstance(item, dict) and "file_id" in item and "image_url" not in item:
        # OpenAI's other JSON reference form; say which one works here.
        raise invalid(
            f'{param}: file_id references are not supported; send {{"image_url": '
            '"data:image/png;base64,..."} or the data: URL itself',
            param=param,
            code="unsupported_parameter",
        )
    if isinstance(item, dict):  # OpenAI's JSON edits: {"image_url": "data:..."}
        item = item.get("image_url", item.get("url"))
        if isinstance(item, dict):
            item = item.get("url")
    if not isinstance(item, str):
        raise invalid(f"{param}: each image must be a data: URL string", param=param)
    head, sep, payload = item.partition(",")
    if not head[:5].lower() == "data:":
        raise invalid(
            f"{param}: only data: URLs are accepted (the proxy never fetches URLs)",
            param=param,
            code="unsupported_url",
        )
    if not sep or not head.lower().endswith(";base64"):
        raise invalid(f"{param}: data: URLs must be base64 (data:image/png;base64,...)", param)
    if len(payload) * 3 // 4 > settings.max_image_bytes + 3:
        raise too_large(f"{param}: image is over {settings.max_image_bytes} bytes", param=param)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param}: the data: URL is not valid base64", param=param) from None
    if len(data) > settings.max_image_bytes:
        raise too_large(f"{param}: image is over {settings.max_image_bytes} bytes", param=param)
    if not data:
        raise invalid(f"{param}: the image is empty", param=param)
    return PendingImage(param, data)


async def prepare_references(
    pending: list[PendingImage], model: ModelSpec
) -> tuple[ReferenceImage, ...]:
    if not pending:
        return ()
    results = await asyncio.gather(
        *(
            asyncio.to_thread(
                prepare_reference, p.data, param=p.param, max_side=model.max_reference_side
            )
            for p in pending
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):  # the first bad image, in the caller's order
            raise result
    return tuple(results)  # type: ignore[arg-type]
