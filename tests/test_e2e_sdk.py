"""End to end with the real `openai` SDK: SDK → uvicorn → proxy → HTTP → emulator.

Upstream call counts and the fields each call carried come from the emulator's call log.
"""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def picture(width: int, height: int, fmt: str = "PNG") -> io.BytesIO:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(out, format=fmt)
    out.seek(0)
    return out


def test_sync_sdk_generates_an_image_of_the_requested_size(openai_client, emulator):
    result = openai_client.images.generate(
        prompt="a lighthouse at dusk", size="512x384", response_format="b64_json"
    )
    assert len(result.data) == 1
    image = decoded(result.data[0].b64_json)
    assert image.size == (512, 384)
    assert result.data[0].url is None
    assert result.model_extra["account_used"] == 1
    assert result.model_extra["model"] == "@cf/black-forest-labs/flux-2-dev"
    (call,) = emulator.calls()
    assert call["model"] == "@cf/black-forest-labs/flux-2-dev"
    assert call["content_type"] == "multipart/form-data"
    assert call["fields"]["prompt"] == "a lighthouse at dusk"
    assert (call["fields"]["width"], call["fields"]["height"]) == ("512", "384")


async def test_async_sdk_generates_an_image(async_openai_client, emulator):
    result = await async_openai_client.images.generate(
        prompt="a fox in snow",
        model="flux-2-klein-4b",
        size="256x256",
        response_format="b64_json",
    )
    assert decoded(result.data[0].b64_json).size == (256, 256)
    assert result.model_extra["model"] == "@cf/black-forest-labs/flux-2-klein-4b"
    assert [c["model"] for c in emulator.calls()] == ["@cf/black-forest-labs/flux-2-klein-4b"]


def test_openai_model_names_are_served_by_the_default_model(openai_client, emulator):
    result = openai_client.images.generate(prompt="a cat", model="dall-e-3", size="256x256")
    assert result.model_extra["model"] == "@cf/black-forest-labs/flux-2-dev"


def test_edit_with_one_image_sends_it_as_input_image_0(openai_client, emulator):
    result = openai_client.images.edit(
        image=("cat.png", picture(200, 150), "image/png"),
        prompt="make the cat blue",
        size="512x512",
        response_format="b64_json",
    )
    assert decoded(result.data[0].b64_json).size == (512, 512)
    (call,) = emulator.calls()
    assert set(call["files"]) == {"input_image_0"}
    assert (call["files"]["input_image_0"]["width"], call["files"]["input_image_0"]["height"]) == (
        200,
        150,
    )


def test_edit_with_three_images_sends_three_inputs_and_scales_the_large_one(
    openai_client, emulator
):
    images = [
        ("a.png", picture(1024, 768), "image/png"),
        ("b.jpg", picture(100, 100, "JPEG"), "image/jpeg"),
        picture(640, 640, "WEBP"),  # nameless: arrives as "upload", application/octet-stream
    ]
    result = openai_client.images.edit(
        image=images, prompt="the three of them together", response_format="b64_json"
    )
    assert len(result.data) == 1
    (call,) = emulator.calls()
    files = call["files"]
    assert sorted(files) == ["input_image_0", "input_image_1", "input_image_2"]
    assert files["input_image_0"]["width"] == 511 and files["input_image_0"]["height"] < 512
    assert (files["input_image_1"]["width"], files["input_image_1"]["height"]) == (100, 100)
    assert files["input_image_2"]["width"] <= 511 and files["input_image_2"]["height"] <= 511
    assert [files[f"input_image_{i}"]["mime"] for i in range(3)] == [
        "image/png",
        "image/jpeg",
        "image/webp",
    ]


def test_seed_zero_is_forwarded_upstream(openai_client, emulator):
    result = openai_client.images.generate(
        prompt="a cat", size="256x256", extra_body={"seed": 0, "steps": 4}
    )
    (call,) = emulator.calls()
    assert call["fields"]["seed"] == "0"
    assert call["fields"]["steps"] == "4"
    assert result.model_extra["seed"] == 0


def test_n_3_returns_three_images_made_with_distinct_seeds(openai_client, emulator):
    result = openai_client.images.generate(prompt="a cat", n=3, size="256x256")
    assert len(result.data) == 3
    calls = emulator.calls()
    assert len(calls) == 3
    seeds = {call["fields"]["seed"] for call in calls}
    assert len(seeds) == 3
    assert sorted(map(str, result.model_extra["seeds"])) == sorted(seeds)
    # Different seeds, different pictures.
    assert len({item.b64_json for item in result.data}) == 3


def test_default_response_has_b64_json_and_a_url_served_without_auth(openai_client, proxy):
    result = openai_client.images.generate(prompt="a cat", size="256x256")
    item = result.data[0]
    assert item.b64_json and item.url
    assert item.url.startswith(proxy.url + "/v1/images/files/")
    assert item.revised_prompt == "a cat"
    served = httpx.get(item.url)  # no Authorization header
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == base64.b64decode(item.b64_json)


def test_url_answers_404_once_expired(openai_client, proxy):
    result = openai_client.images.generate(prompt="a cat", size="256x256", response_format="url")
    url = result.data[0].url
    assert result.data[0].b64_json is None
    assert httpx.get(url).status_code == 200
    proxy.clock.advance(proxy.settings.image_ttl_seconds + 1)
    gone = httpx.get(url)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "image_not_found"


def test_request_id_reaches_the_sdk_on_success_and_on_error(openai_client, emulator):
    raw = openai_client.images.with_raw_response.generate(prompt="a cat", size="256x256")
    assert raw.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(prompt="a cat", size="7x7")
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert caught.value.body["param"] == "size"
    assert len(emulator.calls()) == 1  # only the good request went upstream


def test_bad_key_is_an_authentication_error_in_the_sdk(proxy, emulator):
    client = openai.OpenAI(base_url=proxy.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.images.generate(prompt="a cat")
    assert caught.value.code == "invalid_api_key"
    assert emulator.calls() == []


def test_models_list_through_the_sdk(openai_client):
    ids = [model.id for model in openai_client.models.list()]
    assert "@cf/black-forest-labs/flux-2-dev" in ids
    assert openai_client.models.retrieve("flux-2-klein-4b").id.endswith("flux-2-klein-4b")
