"""What comes back, end to end: the upstream bytes untouched unless `output_format` /
`output_compression` ask for a change; converted images with the right format, size, file
extension and Content-Type; URL bases (PUBLIC_BASE_URL, X-Forwarded-* only from trusted
proxies); URL images kept in Redis and served by another proxy instance.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import pytest
import redis
from conftest import API_KEY, REDIS_URL, start_proxy
from PIL import Image

from flux_proxy.api.body import RawRequest
from flux_proxy.api.output import conversion_target
from flux_proxy.api.parse import ImageRequest, build_image_request
from flux_proxy.app import create_app
from flux_proxy.clock import FrozenClock
from flux_proxy.emulator.render import RenderKey, render_image
from flux_proxy.images import convert_output
from flux_proxy.job import GeneratedImage
from flux_proxy.models import find_model
from flux_proxy.settings import Settings


def generate(proxy, **body) -> dict:
    response = httpx.post(
        proxy.base_url + "/images/generations", headers=proxy.auth, json=body, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def image_bytes(body: dict, index: int = 0) -> bytes:
    return base64.b64decode(body["data"][index]["b64_json"])


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def emulator_image(model: str, prompt: str, seed: int | None, width: int, height: int) -> bytes:
    """Exactly what the emulator draws for this call (its renderer is deterministic)."""
    spec = find_model(model)
    assert spec is not None
    mime = spec.answer_mime if spec.answer_mime == "image/jpeg" else "image/png"
    return render_image(RenderKey(spec.id, prompt, seed, width, height, mime))


# --- pass-through -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "extra", "size"),
    [
        ("flux-2-dev", {"seed": 7, "size": "256x256"}, (256, 256)),
        ("phoenix-1.0", {"seed": 7, "size": "256x256"}, (256, 256)),  # raw JPEG answer
        ("stable-diffusion-xl-lightning", {"seed": 7, "size": "256x256"}, (256, 256)),
        ("flux-1-schnell", {}, (1024, 1024)),  # base64 JPEG, no seed, fixed size
    ],
)
def test_without_output_options_the_upstream_bytes_pass_through_untouched(
    proxy, model, extra, size
):
    body = generate(proxy, prompt="a red kite", model=model, **extra)
    expected = emulator_image(model, "a red kite", extra.get("seed"), *size)
    assert image_bytes(body) == expected
    served = httpx.get(body["data"][0]["url"])
    assert served.content == expected


def test_output_format_equal_to_the_upstreams_changes_nothing(proxy):
    body = generate(proxy, prompt="a kite", seed=3, size="256x256", output_format="png")
    assert image_bytes(body) == emulator_image("flux-2-dev", "a kite", 3, 256, 256)
    assert body["output_format"] == "png"
    body = generate(
        proxy, prompt="a kite", seed=3, size="256x256", model="phoenix-1.0", output_format="jpeg"
    )
    assert image_bytes(body) == emulator_image("phoenix-1.0", "a kite", 3, 256, 256)


def test_output_compression_on_a_png_answer_without_output_format_changes_nothing(proxy):
    body = generate(proxy, prompt="a kite", seed=3, size="256x256", output_compression=30)
    assert image_bytes(body) == emulator_image("flux-2-dev", "a kite", 3, 256, 256)


# --- conversion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "pil", "mime"), [("jpeg", "JPEG", "image/jpeg"),
                                                  ("webp", "WEBP", "image/webp")])  # fmt: skip
def test_png_answer_is_converted_to_the_requested_format_in_b64_and_url(proxy, fmt, pil, mime):
    body = generate(proxy, prompt="a kite", size="512x384", seed=1, output_format=fmt)
    data = image_bytes(body)
    image = opened(data)
    assert image.format == pil and image.size == (512, 384)
    assert body["output_format"] == fmt and body["size"] == "512x384"
    url = body["data"][0]["url"]
    assert url.endswith(f".{fmt}")
    served = httpx.get(url)
    assert served.headers["content-type"] == mime
    assert served.content == data


def test_jpeg_answer_is_converted_to_png(proxy):
    body = generate(proxy, prompt="a kite", model="phoenix-1.0", size="256x256",
                    output_format="png")  # fmt: skip
    assert opened(image_bytes(body)).format == "PNG"
    assert body["output_format"] == "png"
    assert body["data"][0]["url"].endswith(".png")


def test_output_compression_sets_the_lossy_quality(proxy):
    def size_at(compression: int) -> int:
        body = generate(proxy, prompt="a kite", seed=9, size="512x512", output_format="jpeg",
                        output_compression=compression)  # fmt: skip
        assert opened(image_bytes(body)).format == "JPEG"
        return len(image_bytes(body))

    assert size_at(10) < size_at(95)


def test_output_compression_recompresses_a_jpeg_answer_in_its_own_format(proxy):
    original = emulator_image("phoenix-1.0", "a kite", 2, 512, 512)
    body = generate(proxy, prompt="a kite", seed=2, size="512x512", model="phoenix-1.0",
                    output_compression=5)  # fmt: skip
    data = image_bytes(body)
    assert opened(data).format == "JPEG" and body["output_format"] == "jpeg"
    assert len(data) < len(original)


def test_every_image_of_n_is_converted(proxy):
    body = generate(proxy, prompt="a kite", n=3, size="256x256", output_format="webp")
    assert [opened(image_bytes(body, i)).format for i in range(3)] == ["WEBP"] * 3


def test_sdk_reads_the_converted_response_fields(openai_client):
    result = openai_client.images.generate(
        prompt="a kite", size="256x256", output_format="jpeg", output_compression=50
    )
    assert result.output_format == "jpeg" and result.size == "256x256"
    assert result.usage.model_extra["neurons"] > 0
    assert opened(base64.b64decode(result.data[0].b64_json)).format == "JPEG"


# --- URL bases ---------------------------------------------------------------------------------


FORWARDED = {"x-forwarded-proto": "https", "x-forwarded-host": "images.example.org"}


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(proxy):
    response = httpx.post(proxy.base_url + "/images/generations", headers=proxy.auth | FORWARDED,
                          json={"prompt": "a", "size": "256x256"}, timeout=60)  # fmt: skip
    assert response.json()["data"][0]["url"].startswith(proxy.url + "/v1/images/files/")


def test_forwarded_headers_from_a_trusted_proxy_make_the_url(make_proxy):
    proxy = make_proxy(trusted_proxies="10.0.0.0/8, 127.0.0.1")
    response = httpx.post(proxy.base_url + "/images/generations", headers=proxy.auth | FORWARDED,
                          json={"prompt": "a", "size": "256x256"}, timeout=60)  # fmt: skip
    url = response.json()["data"][0]["url"]
    assert url.startswith("https://images.example.org/v1/images/files/")
    # The same path is served by the proxy itself (the reverse proxy forwards it there).
    path = url.removeprefix("https://images.example.org")
    assert httpx.get(proxy.url + path).status_code == 200


def test_public_base_url_wins_over_everything(make_proxy):
    proxy = make_proxy(public_base_url="https://cdn.example.com/flux/", trusted_proxies="127.0.0.1")
    response = httpx.post(proxy.base_url + "/images/generations", headers=proxy.auth | FORWARDED,
                          json={"prompt": "a", "size": "256x256"}, timeout=60)  # fmt: skip
    assert response.json()["data"][0]["url"].startswith(
        "https://cdn.example.com/flux/v1/images/files/"
    )


# --- URL images in Redis ------------------------------------------------------------------


def test_a_url_made_by_one_instance_is_served_by_another_over_redis(emulator, redis_prefix):
    clock = FrozenClock(time.time())
    settings = Settings(
        api_master_key=API_KEY,
        cf_api_base_url=emulator.base_url,
        accounts=emulator.account_configs(),
        state_backend="redis",
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        image_ttl_seconds=600,
    )
    # No store passed in: each app opens its own Redis store, as `flux-proxy serve` does.
    first, second = (
        start_proxy(create_app(settings, clock=clock), settings, clock, None, API_KEY)
        for _ in range(2)
    )
    try:
        body = generate(first, prompt="a kite", size="256x256", output_format="webp")
        url = body["data"][0]["url"]
        other = url.replace(first.url, second.url)
        assert other != url
        served = httpx.get(other)
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/webp"
        assert served.content == image_bytes(body)
        keys = redis.Redis.from_url(REDIS_URL).keys(redis_prefix + "*")
        assert any(b"image:" in key for key in keys)
        clock.advance(601)
        assert httpx.get(other).status_code == 404
    finally:
        first.stop()
        second.stop()


# --- the conversion rule and Pillow work, without servers ---------------------------------------


def picture_bytes(mode: str, fmt: str, color) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (40, 30), color).save(out, format=fmt)
    return out.getvalue()


def request_with(**fields) -> ImageRequest:
    raw = RawRequest({"prompt": "a", **fields})
    return asyncio.run(build_image_request(raw, Settings(accounts=[]), edit=False))


@pytest.mark.parametrize(
    ("mime", "fields", "target"),
    [
        ("image/png", {}, None),
        ("image/png", {"output_format": "png"}, None),
        ("image/png", {"output_compression": 40}, None),  # PNG is lossless: nothing to do
        ("image/png", {"output_format": "jpg"}, "jpeg"),
        ("image/jpeg", {"output_format": "jpeg"}, None),
        ("image/jpeg", {"output_compression": 40}, "jpeg"),
        ("image/jpeg", {"output_format": "webp", "output_compression": 40}, "webp"),
        ("image/webp", {"output_format": "png"}, "png"),
    ],
)
def test_conversion_happens_only_when_it_changes_something(mime, fields, target):
    image = GeneratedImage(mime=mime, account=1, neurons=None, _data=b"")
    assert conversion_target(image, request_with(**fields)) == target


def test_transparent_png_becomes_a_jpeg_on_white_and_keeps_alpha_in_webp():
    data = picture_bytes("RGBA", "PNG", (255, 0, 0, 0))
    jpeg = convert_output(data, "jpeg", 90)
    assert jpeg.mime == "image/jpeg" and (jpeg.width, jpeg.height) == (40, 30)
    assert opened(jpeg.data).getpixel((5, 5))[0] > 240  # white, not black
    webp = convert_output(data, "webp", None)
    assert opened(webp.data).mode == "RGBA"
