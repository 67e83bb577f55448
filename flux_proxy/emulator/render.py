"""Synthetic images: real, decodable, deterministic, and visibly labelled as the emulator's.

The same (model, prompt, seed, size) always gives the same picture, so tests can compare answers
and benchmarks hit a cache instead of measuring PNG encoding.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageDraw, ImageFont

from flux_proxy.models import ModelSpec

_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG"}


@dataclass(frozen=True)
class RenderKey:
    model_id: str
    prompt: str
    seed: int | None
    width: int
    height: int
    mime: str  # image/png or image/jpeg
    inputs: str | None = None  # digest of the img2img/inpainting inputs, when there are any


@dataclass(frozen=True)
class SourceImage:
    """What an img2img or inpainting call changes: the picture, and where (white = repaint)."""

    image: bytes
    mask: bytes | None
    strength: float | None

    def digest(self) -> str:
        parts = [self.image, self.mask or b"", repr(self.strength).encode()]
        return hashlib.sha256(b"\0".join(hashlib.sha256(p).digest() for p in parts)).hexdigest()


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str


def output_mime(spec: ModelSpec) -> str:
    """What the emulator draws for a model: its documented type, or PNG when none is known."""
    return spec.answer_mime if spec.answer_mime in _PIL_FORMATS else "image/png"


def other_mime(mime: str) -> str:
    """The other format, for the `mislabelled` fault: JPEG bytes under a PNG label, or back."""
    return "image/jpeg" if mime == "image/png" else "image/png"


def render_image(key: RenderKey, source: SourceImage | None = None) -> bytes:
    digest = hashlib.sha256(
        json.dumps([key.model_id, key.prompt, key.seed, key.width, key.height]).encode()
    ).digest()
    start, end, accent = digest[0:3], digest[3:6], digest[6:9]
    size = (key.width, key.height)
    mask = Image.linear_gradient("L")
    if digest[9] % 2:
        mask = mask.rotate(90)
    image = Image.composite(
        Image.new("RGB", size, tuple(end)), Image.new("RGB", size, tuple(start)), mask.resize(size)
    )
    draw = ImageDraw.Draw(image)
    for index in range(3):  # a few discs, placed by the hash, so different prompts look different
        x, y, r = digest[10 + 3 * index : 13 + 3 * index]
        cx, cy = x * key.width // 255, y * key.height // 255
        radius = max(8, r * min(size) // 1024)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=tuple(accent))
    if source is not None:
        image = _apply_source(image, source)
        draw = ImageDraw.Draw(image)
    _label(draw, key)
    buffer = BytesIO()
    fmt = _PIL_FORMATS[key.mime]
    options = {"compress_level": 1} if fmt == "PNG" else {"quality": 85}
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _apply_source(drawn: Image.Image, source: SourceImage) -> Image.Image:
    """Like the real pipelines, keep the input where nothing is repainted: with a mask, the
    drawing shows only where the mask is white; without one, it is blended in by `strength`."""
    with Image.open(BytesIO(source.image)) as img:
        original = img.convert("RGB").resize(drawn.size)
    if source.mask is not None:
        with Image.open(BytesIO(source.mask)) as img:
            where = img.convert("L").resize(drawn.size)
        return Image.composite(drawn, original, where)
    strength = 1.0 if source.strength is None else source.strength
    return Image.blend(original, drawn, strength)


def _label(draw: ImageDraw.ImageDraw, key: RenderKey) -> None:
    text = f"flux-proxy EMULATOR - not a real model - {key.model_id.rsplit('/', 1)[-1]}"
    font_size = max(10, min(key.width, key.height) // 32)
    try:
        font = ImageFont.load_default(size=font_size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        font = ImageFont.load_default()
    band = font_size * 2
    draw.rectangle((0, key.height - band, key.width, key.height), fill=(0, 0, 0))
    draw.text(
        (font_size // 2, key.height - band + font_size // 2), text, fill=(255, 255, 255), font=font
    )


def encode_answer(
    spec: ModelSpec, key: RenderKey, source: SourceImage | None = None, label: str | None = None
) -> Answer:
    """The success body the model's real API would send, from the model table's answer format.
    `label` is the Content-Type of a raw answer when it is not what the bytes are."""
    image = render_image(key, source)
    if spec.answer == "raw_bytes":
        return Answer(body=image, content_type=label or key.mime)
    envelope = {
        "result": {"image": base64.b64encode(image).decode("ascii")},
        "success": True,
        "errors": [],
        "messages": [],
    }
    return Answer(body=json.dumps(envelope).encode(), content_type="application/json")


class AnswerCache:
    """A small LRU of finished answers; a miss renders in a worker thread so the loop stays free."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[RenderKey, Answer] = OrderedDict()

    async def get(self, key: RenderKey, build: Callable[[], Answer]) -> Answer:
        answer = self._entries.get(key)
        if answer is not None:
            self._entries.move_to_end(key)
            return answer
        answer = await asyncio.to_thread(build)
        self._entries[key] = answer
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return answer
