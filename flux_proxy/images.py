"""Pillow work: check that reference images are a real PNG, JPEG or WebP and scale the ones a
model cannot take (FLUX.2 needs every input image below 512x512); convert generated images to
the caller's `output_format`.

All functions here are synchronous and CPU-bound: the API layer runs them in a worker thread
(`asyncio.to_thread`) so a large upload never stalls the event loop.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from flux_proxy.errors import ApiError, invalid
from flux_proxy.job import ReferenceImage

# Far above any sane reference image (a 50 MB PNG is ~6000x6000), far below what would let a
# tiny compressed file unpack into gigabytes of pixels.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_SAVE_OPTIONS = {
    # zlib level 1: a photo-like PNG scaled to 511x383 re-encodes in 28 ms instead of 112 ms
    # at the default level 6, for a file 19% larger (324 KB, not 273 KB), sent once upstream.
    "PNG": {"optimize": False, "compress_level": 1},
    "JPEG": {"quality": 92},
    "WEBP": {"quality": 92},
}


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    format: str  # Pillow's name: PNG | JPEG | WEBP
    width: int
    height: int


def inspect_image(data: bytes, *, param: str) -> ImageInfo:
    """Check that `data` is a whole PNG, JPEG or WebP image; 400 naming `param` if not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise invalid(
                        f"{param}: image is {width}x{height}, too many pixels", param=param
                    )
                if fmt not in _FORMATS:
                    raise invalid(
                        f"{param}: {fmt or 'unknown'} images are not accepted; "
                        "send PNG, JPEG or WebP",
                        param=param,
                        code="invalid_image_format",
                    )
                img.verify()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise invalid(f"{param}: image has too many pixels", param=param) from None
    except Exception:  # Pillow raises many types for broken files; all mean the same here
        raise invalid(
            f"{param}: not a readable PNG, JPEG or WebP image",
            param=param,
            code="invalid_image",
        ) from None
    return ImageInfo(_FORMATS[fmt], fmt, width, height)


_TURNED = (5, 6, 7, 8)  # EXIF orientations shown a quarter turn from how they are stored


def shown_size(img: Image.Image) -> tuple[int, int]:
    """An image's size as viewers show it: a phone's portrait photo is stored landscape with
    an EXIF orientation that turns it upright."""
    width, height = img.size
    if img.getexif().get(0x0112) in _TURNED:
        return height, width
    return width, height


def fit_below(data: bytes, info: ImageInfo, max_side: int) -> tuple[bytes, int, int]:
    """Scale an image so both sides are at most `max_side`, keeping its aspect and format,
    upright as shown (the EXIF orientation applied; upstream models read no EXIF).

    Returns the original bytes untouched when they already fit and need no turning.
    """
    with Image.open(io.BytesIO(data)) as img:
        orientation = img.getexif().get(0x0112, 1)
    if info.width <= max_side and info.height <= max_side and orientation in (None, 1):
        return data, info.width, info.height
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG":
            img.draft("RGB", (max_side, max_side))  # decode at reduced scale: much faster
        img = ImageOps.exif_transpose(img)  # phone photos: keep them upright once EXIF is gone
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        if info.format == "JPEG" and img.mode not in ("RGB", "L", "CMYK"):
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, format=info.format, **_SAVE_OPTIONS[info.format])
        return out.getvalue(), img.width, img.height


def prepare_reference(data: bytes, *, param: str, max_side: int) -> ReferenceImage:
    """Check one reference image and scale it below the model's limit when needed."""
    info = inspect_image(data, param=param)
    scaled, width, height = fit_below(data, info, max_side)
    return ReferenceImage(data=scaled, mime=info.mime, width=width, height=height)


# --- output conversion (`output_format`, `output_compression`) ---------------------------------

OUTPUT_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Without `output_compression`, lossy output is saved at this quality: close to the original,
# a fraction of the size of quality 100.
DEFAULT_LOSSY_QUALITY = 92


@dataclass(frozen=True)
class ConvertedImage:
    data: bytes
    mime: str
    width: int
    height: int


def convert_output(data: bytes, output_format: str, compression: int | None) -> ConvertedImage:
    """Re-encode a generated image as `output_format` (png | jpeg | webp).

    `compression` is OpenAI's `output_compression` (0-100, higher keeps more detail), used as
    the JPEG/WebP quality. JPEG has no alpha, so a transparent image is laid on white first.
    """
    pil_format = output_format.upper()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        if pil_format == "PNG":
            options: dict = {"compress_level": 6}
        else:
            quality = DEFAULT_LOSSY_QUALITY if compression is None else compression
            options = {"quality": quality}
        out = io.BytesIO()
        img.save(out, format=pil_format, **options)
        return ConvertedImage(out.getvalue(), OUTPUT_MIMES[output_format], img.width, img.height)
