"""OpenAI's edit masks (transparent = repaint) turned into the inpainting models' (white =
repaint), checked pixel by pixel."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from flux_proxy.errors import ApiError
from flux_proxy.masks import convert_mask


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def openai_mask(width: int, height: int, transparent_box: tuple[int, int, int, int]) -> bytes:
    mask = Image.new("RGBA", (width, height), (10, 20, 30, 255))
    mask.paste((0, 0, 0, 0), transparent_box)
    return png(mask)


def test_fully_transparent_pixels_become_white_and_the_rest_black():
    data = openai_mask(8, 4, (0, 0, 4, 4))
    converted = convert_mask(data, image_size=(8, 4), target=(8, 4))
    result = Image.open(io.BytesIO(converted.data))
    assert result.mode == "L" and result.size == (8, 4)
    assert [result.getpixel((x, 0)) for x in range(8)] == [255] * 4 + [0] * 4


def test_partly_transparent_pixels_are_kept_not_repainted():
    mask = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    mask.putpixel((1, 0), (0, 0, 0, 1))  # almost transparent is still not fully transparent
    result = Image.open(io.BytesIO(convert_mask(png(mask), image_size=(2, 1), target=(2, 1)).data))
    assert [result.getpixel((0, 0)), result.getpixel((1, 0))] == [255, 0]


def test_the_mask_follows_the_image_when_it_was_scaled():
    data = openai_mask(200, 100, (0, 0, 100, 100))
    converted = convert_mask(data, image_size=(200, 100), target=(100, 50))
    result = Image.open(io.BytesIO(converted.data))
    assert (converted.width, converted.height) == result.size == (100, 50)
    assert set(result.getdata()) == {0, 255}  # still two-valued
    assert result.getpixel((10, 10)) == 255 and result.getpixel((90, 10)) == 0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (png(Image.new("RGB", (8, 4))), "alpha"),
        (openai_mask(4, 4, (0, 0, 1, 1)), "same size"),
        (b"not an image at all", "readable"),
    ],
    ids=["no-alpha", "other-size", "garbage"],
)
def test_unusable_masks_are_a_400_naming_mask(data, needle):
    with pytest.raises(ApiError) as caught:
        convert_mask(data, image_size=(8, 4), target=(8, 4))
    assert caught.value.status == 400 and caught.value.param == "mask"
    assert needle in caught.value.message


def test_a_jpeg_mask_is_refused_since_it_cannot_be_transparent():
    out = io.BytesIO()
    Image.new("RGB", (8, 4)).save(out, format="JPEG")
    with pytest.raises(ApiError) as caught:
        convert_mask(out.getvalue(), image_size=(8, 4), target=(8, 4))
    assert caught.value.param == "mask" and "PNG" in caught.value.message
