"""Reference-image checks and scaling (flux_proxy.images) and the URL image store."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from flux_proxy.clock import FrozenClock
from flux_proxy.errors import ApiError
from flux_proxy.image_store import ImageStore
from flux_proxy.images import MAX_PIXELS, fit_below, inspect_image, prepare_reference
from flux_proxy.store.memory import MemoryStore


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def photo(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    # A gradient, so a scaled copy is a real resampling and not a flat colour.
    img = Image.linear_gradient("L").resize((width, height)).convert(mode)
    return encode(img, fmt)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_1024x768_reference_is_scaled_below_512_with_its_aspect_and_format(fmt):
    ref = prepare_reference(photo(1024, 768, fmt), param="image", max_side=511)
    assert ref.width < 512 and ref.height < 512
    assert ref.width == 511
    assert abs(ref.width / ref.height - 1024 / 768) < 0.01
    decoded = Image.open(io.BytesIO(ref.data))
    assert decoded.size == (ref.width, ref.height)
    assert decoded.format == fmt
    assert ref.mime == {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]


def test_a_tall_reference_is_scaled_on_its_long_side():
    ref = prepare_reference(photo(600, 2000, "JPEG"), param="image", max_side=511)
    assert ref.height == 511 and ref.width < 200


@pytest.mark.parametrize(("width", "height"), [(511, 511), (300, 200), (1, 1)])
def test_small_references_are_untouched_byte_for_byte(width, height):
    data = photo(width, height, "PNG")
    ref = prepare_reference(data, param="image", max_side=511)
    assert ref.data is data
    assert (ref.width, ref.height) == (width, height)


def test_exactly_512_is_too_big_for_flux2():
    ref = prepare_reference(photo(512, 100), param="image", max_side=511)
    assert ref.width == 511


def test_rgba_png_keeps_alpha_and_palette_jpeg_mode_is_converted():
    rgba = prepare_reference(photo(800, 800, "PNG", "RGBA"), param="image", max_side=511)
    assert Image.open(io.BytesIO(rgba.data)).mode == "RGBA"
    cmyk = prepare_reference(photo(800, 600, "JPEG", "CMYK"), param="image", max_side=511)
    assert Image.open(io.BytesIO(cmyk.data)).size == (cmyk.width, cmyk.height)


def test_exif_rotated_photo_is_scaled_upright():
    img = Image.new("RGB", (1000, 500), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(img, "JPEG", exif=exif)
    ref = prepare_reference(data, param="image", max_side=511)
    assert ref.height > ref.width  # displayed upright, as the phone showed it


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        photo(20, 20, "GIF"),
        photo(20, 20, "BMP"),
        photo(64, 64, "PNG")[:60],  # truncated
    ],
    ids=["empty", "text", "gif", "bmp", "truncated"],
)
def test_anything_but_a_whole_png_jpeg_or_webp_is_a_400_naming_the_param(data):
    with pytest.raises(ApiError) as caught:
        inspect_image(data, param="input_image_2")
    assert caught.value.status == 400
    assert caught.value.param == "input_image_2"


def test_decompression_bomb_is_refused_from_its_header():
    side = int(MAX_PIXELS**0.5) + 100
    bomb = encode(Image.new("1", (side, side)), "PNG")  # a few KB that unpack to many MB
    assert len(bomb) < 200_000
    with pytest.raises(ApiError) as caught:
        inspect_image(bomb, param="image")
    assert caught.value.status == 400


def test_fit_below_reports_original_size_when_nothing_to_do():
    data = photo(100, 50)
    info = inspect_image(data, param="image")
    assert fit_below(data, info, 511) == (data, 100, 50)


async def test_image_store_round_trip_and_expiry():
    clock = FrozenClock(1_000)
    images = ImageStore(MemoryStore(clock), ttl=60)
    name = await images.put(b"\x89PNG...", "image/png", "png")
    stem, ext = name.split(".")
    assert ext == "png" and len(stem) == 32  # 24 random bytes = 192 bits
    assert await images.get(name) == (b"\x89PNG...", "image/png")
    assert await images.get("x" * 32 + ".png") is None
    assert await images.get("../../etc/passwd") is None
    clock.advance(61)
    assert await images.get(name) is None


async def test_image_store_names_are_unique():
    images = ImageStore(MemoryStore(FrozenClock(0)), ttl=60)
    names = {await images.put(b"x", "image/png", "png") for _ in range(200)}
    assert len(names) == 200
