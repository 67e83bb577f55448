"""The plain values that travel between the API layer, the pool and the Workers AI client.

The API turns an OpenAI or seed request into an `ImageJob`; the pool hands it to the client;
the client returns a `GeneratedImage`. None of these know a wire format.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from flux_proxy.models import ModelSpec


@dataclass(frozen=True)
class ReferenceImage:
    """An input image, already checked and, when needed, scaled below the model's limit."""

    data: bytes
    mime: str  # image/png | image/jpeg | image/webp
    width: int
    height: int


@dataclass(frozen=True)
class ImageJob:
    """One image to make: everything validated, in the model's own terms."""

    model: ModelSpec
    prompt: str  # the text sent upstream; a JSON prompt is already serialised
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    references: tuple[ReferenceImage, ...] = ()
    # Inpainting: white marks what to repaint (diffusers' convention), same size as
    # references[0]. The API converts OpenAI's transparent-means-repaint masks into this.
    mask: ReferenceImage | None = None
    strength: float | None = None  # img2img: how far to move from references[0]

    def estimated_neurons(self) -> float:
        return self.model.estimate_neurons(
            self.width,
            self.height,
            self.steps,
            tuple((ref.width, ref.height) for ref in self.references),
        )


@dataclass
class GeneratedImage:
    """An image as the upstream returned it.

    Base64 answers stay base64 and raw answers stay bytes until someone needs the other form,
    so the common path (base64 in, `b64_json` out) never decodes or re-encodes megabytes.
    """

    mime: str
    account: int  # the N of the account that made it
    neurons: float | None  # from cf-ai-neurons; None when the header was absent
    seed: int | None = None
    _b64: str | None = field(default=None, repr=False)
    _data: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_b64(cls, b64: str, **kwargs) -> GeneratedImage:
        return cls(mime=kwargs.pop("mime", None) or sniff_b64_mime(b64), _b64=b64, **kwargs)

    @classmethod
    def from_bytes(cls, data: bytes, **kwargs) -> GeneratedImage:
        return cls(mime=kwargs.pop("mime", None) or sniff_mime(data), _data=data, **kwargs)

    @property
    def b64(self) -> str:
        if self._b64 is None:
            self._b64 = base64.b64encode(self._data or b"").decode("ascii")
        return self._b64

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = base64.b64decode(self._b64 or "")
        return self._data

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}.get(
            self.mime, "bin"
        )


def sniff_mime(data: bytes) -> str:
    """The image type from its first bytes; `application/octet-stream` if it is none we know."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def sniff_b64_mime(b64: str) -> str:
    """Sniff a base64 image by decoding only its first 16 characters (12 bytes)."""
    try:
        return sniff_mime(base64.b64decode(b64[:16], validate=False))
    except (binascii.Error, ValueError):
        return "application/octet-stream"
