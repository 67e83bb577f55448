"""End to end, today's OpenAI Images surface: the answer's form by model name, OpenAI model
names by pattern, variations, masks, fixed-size models and the image count, through a real
uvicorn proxy on the emulator (over HTTP), with the real openai SDK and the request shapes
Open WebUI sends (reproduced from its `backend/open_webui/routers/images.py`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid

import httpx
import openai
import pytest
from conftest import picture
from PIL import Image

from flux_proxy.masks import convert_mask

DEV = "@cf/black-forest-labs/flux-2-dev"
INPAINTING = "@cf/runwayml/stable-diffusion-v1-5-inpainting"


def client_for(proxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=60)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def half_transparent_mask(width: int, height: int) -> bytes:
    """OpenAI's kind of mask: the left half fully transparent (repaint), the rest opaque."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


# --- the answer's form when the caller names none ---------------------------------------------


def test_open_webui_generation_with_gpt_image_1_and_no_format_gets_b64_json_only(proxy, emulator):
    # Open WebUI sends response_format only when its model does not match ^gpt-image.
    body = {"model": "gpt-image-1", "prompt": "a lighthouse", "n": 1, "size": "512x512"}
    response = httpx.post(
        proxy.base_url + "/images/generations",
        json=body,
        headers={**proxy.auth, "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert "url" not in item
    assert Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).size == (512, 512)


def test_open_webui_edit_with_one_image_and_no_format_gets_b64_json_only(proxy, emulator):
    # Its edit: a multipart form with model, prompt, n, size and one `image` named <uuid>.png.
    response = httpx.post(
        proxy.base_url + "/images/edits",
        data={"model": "gpt-image-1", "prompt": "make it blue", "n": "1", "size": "512x512"},
        files={"image": (f"{uuid.uuid4()}.png", picture(96, 64), "image/png")},
        headers=proxy.auth,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert "url" not in item and item["b64_json"]
    (call,) = emulator.calls()
    assert call["model"] == DEV and set(call["files"]) == {"input_image_0"}


def test_open_webui_with_a_base_url_ending_in_a_slash_still_reaches_the_routes(proxy, emulator):
    # Open WebUI joins f"{IMAGES_OPENAI_API_BASE_URL}/images/generations" as text, so a base
    # URL entered as ".../v1/" asks for "/v1//images/generations"; before, a 404.
    base = proxy.base_url + "/"
    generated = httpx.post(
        f"{base}/images/generations",
        json={"model": "gpt-image-1", "prompt": "a lighthouse", "n": 1, "size": "256x256"},
        headers={**proxy.auth, "Content-Type": "application/json"},
        timeout=60,
    )
    assert generated.status_code == 200, generated.text
    edited = httpx.post(
        f"{base}/images/edits",
        data={"model": "gpt-image-1", "prompt": "make it blue", "size": "256x256"},
        files={"image": (f"{uuid.uuid4()}.png", picture(64, 64), "image/png")},
        headers=proxy.auth,
        timeout=60,
    )
    assert edited.status_code == 200, edited.text
    assert len(emulator.calls()) == 2
    refused = httpx.post(f"{base}/images/generations", json={"prompt": "a"}, timeout=60)
    assert refused.status_code == 401  # the same route, behind the same key


def test_dall_e_3_with_no_format_gets_only_a_url_that_downloads(proxy, emulator):
    result = client_for(proxy).images.generate(model="dall-e-3", prompt="a fox", size="256x256")
    (item,) = result.data
    assert item.b64_json is None
    image = httpx.get(item.url, timeout=30)
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size == (256, 256)


def test_the_projects_own_names_and_no_name_still_get_both_forms(proxy, emulator):
    client = client_for(proxy)
    for kwargs in ({}, {"model": "flux-2-klein-4b"}):
        (item,) = client.images.generate(prompt="a fox", size="256x256", **kwargs).data
        assert item.b64_json and item.url


@pytest.mark.parametrize(
    ("setting", "model", "has_b64", "has_url"),
    [
        ("both", "gpt-image-1", True, True),
        ("url", "flux-2-klein-4b", False, True),
        ("b64_json", "dall-e-2", True, False),
    ],
)
def test_default_response_format_setting_overrides_the_name_rule(
    make_proxy, emulator, setting, model, has_b64, has_url
):
    proxy = make_proxy(default_response_format=setting)
    (item,) = client_for(proxy).images.generate(model=model, prompt="a fox", size="256x256").data
    assert (bool(item.b64_json), bool(item.url)) == (has_b64, has_url)


def test_a_stream_for_gpt_image_1_carries_no_url(proxy, emulator):
    stream = client_for(proxy).images.generate(
        model="gpt-image-1", prompt="a fox", size="256x256", stream=True
    )
    events = list(stream)
    assert [e.type for e in events] == ["image_generation.completed"]
    assert events[0].b64_json and "url" not in (events[0].model_extra or {})


# --- OpenAI model names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "gpt-image-1",
        "gpt-image-1.5",
        "gpt-image-1-mini",
        "gpt-image-2",
        "gpt-image-2-2026-04-21",
        "chatgpt-image-latest",
        "dall-e-2",
        "dall-e-3",
    ],
)
def test_every_openai_image_model_name_is_served_by_the_default_model(proxy, emulator, name):
    result = client_for(proxy).images.generate(model=name, prompt="a fox", size="256x256")
    assert result.model_extra["model"] == DEV


@pytest.mark.parametrize("name", ["dall-e-9", "gpt-image", "gpt-4o", "dall-e-3x"])
def test_names_outside_the_pattern_are_unknown_models(proxy, emulator, name):
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(proxy).images.generate(model=name, prompt="a fox", size="256x256")
    assert caught.value.body["code"] == "model_not_found"
    assert emulator.calls() == []


def test_model_aliases_override_a_name_the_pattern_covers(make_proxy, emulator):
    proxy = make_proxy(model_aliases="gpt-image-2=flux-2-klein-4b")
    client = client_for(proxy)
    result = client.images.generate(model="gpt-image-2", prompt="a fox", size="256x256")
    assert result.model_extra["model"] == "@cf/black-forest-labs/flux-2-klein-4b"
    assert result.data[0].url is None  # still answered as OpenAI answers for that name
    other = client.images.generate(model="gpt-image-1.5", prompt="a fox", size="256x256")
    assert other.model_extra["model"] == DEV


# --- edits: image count, input_fidelity, fixed-size models ------------------------------------


def test_seventeen_images_are_a_400_naming_image_and_the_models_limit(proxy, emulator):
    images = [(f"{i}.png", picture(16, 16), "image/png") for i in range(17)]
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(proxy).images.edit(image=images, prompt="merge them", size="256x256")
    assert caught.value.body["param"] == "image"
    assert "at most 4" in caught.value.body["message"]
    assert emulator.calls() == []


def test_input_fidelity_is_accepted_and_ignored(proxy, emulator):
    result = client_for(proxy).images.edit(
        image=("cat.png", picture(64, 64), "image/png"),
        prompt="make it blue",
        input_fidelity="high",
        size="256x256",
    )
    assert len(result.data) == 1
    assert "input_fidelity" not in emulator.calls()[0]["fields"]


@pytest.mark.parametrize("quality", ["xhigh", "max"])
def test_the_sdks_newer_quality_values_are_accepted_echoed_and_ignored(proxy, emulator, quality):
    # openai 3.x types `quality` with "xhigh" and "max" (GPT Image 2.5), for generations and
    # edits, and the Vercel AI SDK's openai provider passes them on; before, both were a 400.
    client = client_for(proxy)
    generated = client.images.generate(
        model="gpt-image-2", prompt="a fox", quality=quality, size="256x256"
    )
    edited = client.images.edit(
        image=("cat.png", picture(64, 64), "image/png"),
        prompt="make it blue",
        quality=quality,
        size="256x256",
    )
    assert generated.quality == quality and edited.quality == quality
    assert len(emulator.calls()) == 2
    assert all("quality" not in call["fields"] for call in emulator.calls())


def test_schnell_with_its_own_size_makes_one_call_with_no_size_fields(proxy, emulator):
    result = client_for(proxy).images.generate(
        model="flux-1-schnell", prompt="a fox", size="1024x1024", response_format="b64_json"
    )
    assert len(result.data) == 1
    (call,) = emulator.calls()
    assert call["model"] == "@cf/black-forest-labs/flux-1-schnell"
    assert not {"width", "height", "size"} & set(call["fields"])


def test_schnell_with_another_size_is_a_400_saying_which_size_it_makes(proxy, emulator):
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(proxy).images.generate(model="flux-1-schnell", prompt="a", size="512x512")
    assert caught.value.body["param"] == "size"
    assert "1024x1024" in caught.value.body["message"]
    assert emulator.calls() == []


# --- variations ---------------------------------------------------------------------------------


def test_create_variation_through_the_sdk_uses_the_image_as_reference_0(proxy, emulator):
    original = picture(200, 150)
    result = client_for(proxy).images.create_variation(
        image=("cat.png", original, "image/png"), n=2, size="256x256", response_format="b64_json"
    )
    assert len(result.data) == 2
    assert result.model_extra["model"] == DEV
    calls = emulator.calls()
    assert [c["model"] for c in calls] == [DEV, DEV]
    assert {c["files"]["input_image_0"]["sha256"] for c in calls} == {sha256(original)}
    assert {c["fields"]["prompt"] for c in calls} == {proxy.settings.variation_prompt}
    assert len({c["fields"]["seed"] for c in calls}) == 2  # each its own seed


def test_a_variation_with_no_size_is_1024_on_its_longer_side_in_the_images_shape(proxy, emulator):
    # OpenAI's default is 1024x1024 (for its square inputs); before, every variation with no
    # size came back 1024x768 (FLUX.2's own default), so a square logo's variation was 4:3.
    client = client_for(proxy)
    for width, height in ((256, 256), (300, 200)):
        client.images.create_variation(image=("logo.png", picture(width, height), "image/png"))
    shapes = [(c["fields"]["width"], c["fields"]["height"]) for c in emulator.calls()]
    assert shapes == [("1024", "1024"), ("1024", "688")]


def test_a_variation_for_dall_e_2_with_no_format_gets_a_url(proxy, emulator):
    result = client_for(proxy).images.create_variation(
        image=("cat.png", picture(64, 64), "image/png"), model="dall-e-2", size="256x256"
    )
    assert result.data[0].b64_json is None
    assert httpx.get(result.data[0].url, timeout=30).status_code == 200


def test_a_variation_without_an_image_is_a_400_naming_image(proxy, emulator):
    response = httpx.post(
        proxy.base_url + "/images/variations",
        data={"n": "1"},
        files={"unused": (None, b"x")},
        headers=proxy.auth,
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"
    assert emulator.calls() == []


# --- masks ----------------------------------------------------------------------------------------


def test_an_edit_with_a_mask_reaches_the_inpainting_model_with_image_and_mask(proxy, emulator):
    image, mask = picture(64, 48), half_transparent_mask(64, 48)
    result = client_for(proxy).images.edit(
        image=("room.png", image, "image/png"),
        mask=("mask.png", mask, "image/png"),
        prompt="a red sofa",
        size="256x256",
        response_format="b64_json",
    )
    assert result.model_extra["model"] == INPAINTING  # the response says who did it
    (call,) = emulator.calls()
    assert call["model"] == INPAINTING
    assert call["files"]["image"]["sha256"] == sha256(image)
    sent = call["files"]["mask"]
    assert (sent["width"], sent["height"]) == (64, 48)
    expected = convert_mask(mask, image_size=(64, 48), target=(64, 48))
    assert sent["sha256"] == sha256(expected.data)  # white where it was transparent


def test_a_mask_named_for_a_model_that_takes_masks_stays_with_that_model(proxy, emulator):
    model = "@cf/lykon/dreamshaper-8-lcm"
    result = client_for(proxy).images.edit(
        model=model,
        image=("room.png", picture(64, 64), "image/png"),
        mask=("mask.png", half_transparent_mask(64, 64), "image/png"),
        prompt="a red sofa",
        size="256x256",
    )
    assert result.model_extra["model"] == model
    assert [c["model"] for c in emulator.calls()] == [model]


def test_a_mask_of_another_size_is_a_400_naming_mask(proxy, emulator):
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(proxy).images.edit(
            image=("room.png", picture(64, 48), "image/png"),
            mask=("mask.png", half_transparent_mask(32, 32), "image/png"),
            prompt="a red sofa",
        )
    assert caught.value.body["param"] == "mask"
    assert "64x48" in caught.value.body["message"]
    assert emulator.calls() == []


def test_without_a_mask_model_a_mask_stays_a_400(make_proxy, emulator):
    proxy = make_proxy(mask_model="")
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(proxy).images.edit(
            image=("room.png", picture(64, 64), "image/png"),
            mask=("mask.png", half_transparent_mask(64, 64), "image/png"),
            prompt="a red sofa",
        )
    assert caught.value.body["param"] == "mask"
    assert "MASK_MODEL" in caught.value.body["message"]
    assert emulator.calls() == []


# --- the size of an image that is changed, not drawn anew -------------------------------------


@pytest.mark.parametrize(
    ("image_size", "made"),
    [((96, 64), (384, 256)), ((1200, 800), (1024, 680)), ((512, 512), (512, 512))],
)
def test_an_inpainting_edit_with_no_size_keeps_the_images_shape(proxy, emulator, image_size, made):
    # Before: every such edit was sent as 1024x1024, so a 3:2 photo came back stretched square.
    width, height = image_size
    result = client_for(proxy).images.edit(
        image=("room.png", picture(width, height), "image/png"),
        mask=("mask.png", half_transparent_mask(width, height), "image/png"),
        prompt="a red sofa",
        response_format="b64_json",
    )
    (call,) = emulator.calls()
    assert call["model"] == INPAINTING
    assert (call["fields"]["width"], call["fields"]["height"]) == made
    assert result.size == f"{made[0]}x{made[1]}"
    (item,) = result.data
    assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size == made


def test_an_edit_with_no_size_is_1024_on_the_longer_side_in_the_first_images_shape(proxy, emulator):
    # OpenAI's GPT image edits default to `auto`, the input's orientation; before, FLUX.2
    # answered every such edit 1024x768, so a portrait photo's edit came back landscape.
    client = client_for(proxy)
    portrait, square = picture(600, 900), picture(64, 64)
    client.images.edit(model="gpt-image-1", image=("p.png", portrait, "image/png"), prompt="x")
    client.images.edit(
        image=[("s.png", square, "image/png"), ("p.png", portrait, "image/png")],
        prompt="x",
        size="auto",
    )
    client.images.edit(image=("p.png", portrait, "image/png"), prompt="x", size="1024x768")
    shapes = [(c["fields"]["width"], c["fields"]["height"]) for c in emulator.calls()]
    assert shapes == [("688", "1024"), ("1024", "1024"), ("1024", "768")]


def phone_photo(width: int, height: int) -> bytes:
    """A JPEG stored `width`x`height` with EXIF orientation 6, as phones save a portrait photo:
    shown rotated 90 degrees clockwise, `height`x`width`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(out, format="JPEG", exif=exif)
    return out.getvalue()


def test_a_phone_photos_edit_follows_the_photo_as_shown_not_as_stored(proxy, emulator):
    # A portrait phone photo is stored landscape with an EXIF rotation. The reference sent
    # upstream was turned upright while the edit's size followed the stored shape, so FLUX.2
    # was asked for a landscape image of a portrait photo (and a small photo for the SD
    # models went upstream sideways, EXIF and all).
    client = client_for(proxy)
    client.images.edit(model="gpt-image-1", image=("p.jpg", phone_photo(900, 600)), prompt="x")
    client.images.edit(
        model="stable-diffusion-v1-5-img2img", image=("s.jpg", phone_photo(300, 200)), prompt="x"
    )
    flux, sd = emulator.calls()
    assert (flux["fields"]["width"], flux["fields"]["height"]) == ("688", "1024")
    reference = flux["files"]["input_image_0"]
    assert reference["width"] < reference["height"]
    assert (sd["fields"]["width"], sd["fields"]["height"]) == (256, 384)
    (changed,) = [f for f in sd["files"].values() if f["format"]]
    assert (changed["width"], changed["height"]) == (200, 300)


def test_an_img2img_edit_with_no_size_keeps_the_images_shape_and_a_size_still_wins(proxy, emulator):
    client = client_for(proxy)
    for size in (None, "512x512"):
        client.images.edit(
            model="stable-diffusion-v1-5-img2img",
            image=("photo.png", picture(300, 200), "image/png"),
            prompt="as a watercolour",
            **({"size": size} if size else {}),
        )
    shapes = [(c["fields"]["width"], c["fields"]["height"]) for c in emulator.calls()]
    assert shapes == [(384, 256), (512, 512)]


# --- JSON edits ---------------------------------------------------------------------------------


def test_a_json_edit_takes_image_url_objects_and_says_file_id_is_not_supported(proxy, emulator):
    url = "data:image/png;base64," + base64.b64encode(picture(64, 64)).decode()
    headers = {**proxy.auth, "Content-Type": "application/json"}
    made = httpx.post(
        proxy.base_url + "/images/edits",
        json={
            "model": "gpt-image-1",
            "prompt": "x",
            "size": "256x256",
            "images": [{"image_url": url}],
        },
        headers=headers,
        timeout=60,
    )
    assert made.status_code == 200, made.text
    refused = httpx.post(
        proxy.base_url + "/images/edits",
        json={"model": "gpt-image-1", "prompt": "x", "images": [{"file_id": "file-abc"}]},
        headers=headers,
        timeout=60,
    )
    # Before: "images: each image must be a data: URL string", though image_url objects work.
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "images" and error["code"] == "unsupported_parameter"
    assert "file_id" in error["message"]
    assert 'send {"image_url": "data:image/png;base64,..."} or' in error["message"]
    assert len(emulator.calls()) == 1
