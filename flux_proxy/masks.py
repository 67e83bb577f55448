"""OpenAI's edit mask → the inpainting models' mask (Pillow work, run in a worker thread).

OpenAI: a PNG the size of the image, with an alpha channel; its fully transparent pixels mark
the area to repaint. Inpainting models (diffusers' convention, Workers AI's SD 1.5
inpainting): a greyscale image where white means repaint and black means keep. The result is
scaled (nearest neighbour, so it stays two-valued) to the size the image itself was scaled to.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from flux_proxy.errors import ApiError, invalid
from flux_proxy.images import MAX_PIXELS, shown_size
from flux_proxy.job import ReferenceImage

_HOW = "a PNG with an alpha channel whose fully transparent pixels mark the area to edit"


def image_size(data: bytes) -> tuple[int, int]:
    """The size of an (already checked) image as shown (EXIF orientation applied), from its
    header alone."""
    with Image.open(io.BytesIO(data)) as img:
        return shown_size(img)


def convert_mask(
    data: bytes, *, image_size: tuple[int, int], target: tuple[int, int]
) -> ReferenceImage:
    """Check an OpenAI mask against the image's original size and turn it into a white-means-
    repaint L-mode PNG of `target` size. 400 naming `mask` for anything else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "PNG":
                    raise invalid(f"mask must be {_HOW}; got {img.format or 'no image'}", "mask")
                if img.width * img.height > MAX_PIXELS:
                    raise invalid("mask has too many pixels", param="mask")
                if img.size != image_size:
                    raise invalid(
                        f"mask is {img.width}x{img.height} but the image is "
                        f"{image_size[0]}x{image_size[1]}; they must be the same size",
                        param="mask",
                    )
                has_alpha = "A" in img.getbands() or "transparency" in img.info
                if not has_alpha:
                    raise invalid(f"mask has no alpha channel; it must be {_HOW}", param="mask")
                alpha = img.convert("RGBA").getchannel("A")
    except ApiError:
        raise
    except Exception:  # broken files: Pillow raises many types, all mean the same here
        raise invalid(f"mask is not a readable PNG; it must be {_HOW}", param="mask") from None
    repaint = alpha.point(lambda a: 255 if a == 0 else 0)
    if repaint.size != target:
        repaint = repaint.resize(target, Image.Resampling.NEAREST)
    out = io.BytesIO()
    repaint.save(out, format="PNG", compress_level=1)
    return ReferenceImage(data=out.getvalue(), mime="image/png", width=target[0], height=target[1])
