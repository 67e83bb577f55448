"""Every Workers AI image model in the table, end to end through the openai SDK: what the
emulator received (multipart or JSON, which field names, typed values), and that what came back
decodes, in base64 and as a URL file of the right type. Then the names a caller may use (full
id, short name, aliases), `/v1/models`, and the parameters a model cannot take.
"""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from flux_proxy.models import MODELS, ModelSpec

PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG"}
# img2img and inpainting make nothing from text alone: their calls are pinned through the
# client (test_client_images.py) and, with a mask from the API, by the edit tests.
TEXT_MODELS = [spec for spec in MODELS if not spec.requires_reference]


def answer_mime(spec: ModelSpec) -> str:
    """What the emulator answers for a model: its documented type, PNG when none is given."""
    return spec.answer_mime or "image/png"


def arguments(spec: ModelSpec) -> tuple[dict, dict]:
    """SDK arguments exercising every knob the model has, and the upstream fields they imply."""
    kwargs: dict = {"prompt": f"a lighthouse, by {spec.short_name}"}
    extra: dict = {}
    expected: dict = {"prompt": kwargs["prompt"]}
    if spec.takes_size:
        kwargs["size"] = "512x256"
        expected |= {"width": 512, "height": 256}
    if spec.takes_steps:
        steps = min(3, spec.steps_range.maximum)
        extra["steps"] = steps
        expected[spec.steps_field] = steps
    if spec.guidance_range is not None:
        extra["guidance"] = spec.guidance_range.minimum + 1
        expected["guidance"] = spec.guidance_range.minimum + 1
    if spec.takes_seed:
        extra["seed"] = 123
        expected["seed"] = 123
    if spec.takes_negative_prompt:
        extra["negative_prompt"] = "blurry"
        expected["negative_prompt"] = "blurry"
    if extra:
        kwargs["extra_body"] = extra
    return kwargs, expected


@pytest.mark.parametrize("spec", TEXT_MODELS, ids=[spec.short_name for spec in TEXT_MODELS])
def test_every_model_gets_its_own_body_format_and_field_names(openai_client, emulator, spec):
    kwargs, expected = arguments(spec)
    result = openai_client.images.generate(model=spec.short_name, **kwargs)
    assert result.model_extra["model"] == spec.id

    (call,) = emulator.calls()
    assert call["model"] == spec.id
    assert call["status"] == 200
    if spec.body == "multipart":
        assert call["content_type"] == "multipart/form-data"
        # A form carries text; the emulator logs what arrived.
        assert call["fields"] == {name: str(value) for name, value in expected.items()}
    else:
        assert call["content_type"] == "application/json"
        assert call["fields"] == expected  # typed JSON values, exactly these names
    assert "steps" not in call["fields"] or spec.steps_field == "steps"
    if spec.fixed_steps is not None:
        assert not {"steps", "num_steps"} & set(call["fields"])
    if not spec.takes_size:
        assert not {"width", "height"} & set(call["fields"])

    data = base64.b64decode(result.data[0].b64_json)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == PIL_FORMAT[answer_mime(spec)]
    if spec.takes_size:
        assert image.size == (512, 256)
    else:
        assert image.size == (spec.default_width, spec.default_height)
    extension = {"image/png": "png", "image/jpeg": "jpeg"}[answer_mime(spec)]
    assert result.output_format == extension
    assert result.data[0].url.endswith("." + extension)
    served = httpx.get(result.data[0].url)
    assert served.status_code == 200
    assert served.headers["content-type"] == answer_mime(spec)
    assert served.content == data


@pytest.mark.parametrize("spec", [s for s in TEXT_MODELS if s.answer == "raw_bytes"],
                         ids=lambda s: s.short_name)  # fmt: skip
def test_binary_answer_models_come_back_as_base64_only_when_asked(openai_client, emulator, spec):
    result = openai_client.images.generate(
        model=spec.id, prompt="a boat", size="256x256", response_format="b64_json"
    )
    assert result.data[0].url is None
    data = base64.b64decode(result.data[0].b64_json)
    assert Image.open(io.BytesIO(data)).format == PIL_FORMAT[answer_mime(spec)]
    result = openai_client.images.generate(
        model=spec.id, prompt="a boat", size="256x256", response_format="url"
    )
    assert result.data[0].b64_json is None
    served = httpx.get(result.data[0].url)
    assert served.headers["content-type"] == answer_mime(spec)
    assert Image.open(io.BytesIO(served.content)).format == PIL_FORMAT[answer_mime(spec)]


MULTIPART_REFERENCE_MODELS = [s for s in MODELS if s.takes_references and s.body == "multipart"]


@pytest.mark.parametrize("spec", MULTIPART_REFERENCE_MODELS, ids=lambda s: s.short_name)
def test_reference_models_receive_every_image_as_a_numbered_file(openai_client, emulator, spec):
    images = []
    for index, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        out = io.BytesIO()
        Image.new("RGB", (64 + index, 64), color).save(out, format="PNG")
        images.append((f"ref{index}.png", out.getvalue(), "image/png"))
    result = openai_client.images.edit(
        model=spec.short_name, image=images, prompt="the three together", size="256x256"
    )
    assert len(result.data) == 1
    (call,) = emulator.calls()
    assert call["content_type"] == "multipart/form-data"
    assert [call["files"][f"input_image_{i}"]["width"] for i in range(3)] == [64, 65, 66]


# --- names ---------------------------------------------------------------------------------


def test_full_id_and_short_name_reach_the_same_model(openai_client, emulator):
    for spec in TEXT_MODELS:
        for name in (spec.id, spec.short_name):
            result = openai_client.images.generate(
                model=name, prompt="a cat", response_format="b64_json"
            )
            assert result.model_extra["model"] == spec.id
    assert [call["model"] for call in emulator.calls()] == [
        spec.id for spec in TEXT_MODELS for _ in range(2)
    ]


def test_configured_aliases_work_and_the_openai_names_stay(make_proxy, emulator):
    proxy = make_proxy(
        model_aliases="fast=flux-2-klein-4b, sdxl=@cf/stabilityai/stable-diffusion-xl-base-1.0"
    )
    client = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    served = {
        name: client.images.generate(model=name, prompt="a cat", size="256x256").model_extra[
            "model"
        ]
        for name in ("fast", "sdxl", "dall-e-2", "gpt-image-1")
    }
    assert served == {
        "fast": "@cf/black-forest-labs/flux-2-klein-4b",
        "sdxl": "@cf/stabilityai/stable-diffusion-xl-base-1.0",
        "dall-e-2": "@cf/black-forest-labs/flux-2-dev",
        "gpt-image-1": "@cf/black-forest-labs/flux-2-dev",
    }
    assert client.models.retrieve("fast").id == "@cf/black-forest-labs/flux-2-klein-4b"


def test_openai_model_names_follow_the_configured_default_model(make_proxy, emulator):
    proxy = make_proxy(default_model="flux-2-klein-9b")
    client = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    for name in ("dall-e-2", "dall-e-3", "gpt-image-1"):
        result = client.images.generate(model=name, prompt="a cat", size="256x256")
        assert result.model_extra["model"] == "@cf/black-forest-labs/flux-2-klein-9b"
    assert client.models.retrieve("dall-e-3").id == "@cf/black-forest-labs/flux-2-klein-9b"


def test_models_list_names_every_model_with_created_in_seconds(openai_client):
    models = list(openai_client.models.list())
    assert [model.id for model in models] == [spec.id for spec in MODELS]
    for model in models:
        assert model.object == "model"
        assert 1_600_000_000 < model.created < 2_000_000_000
    assert sum(model.model_extra["default"] for model in models) == 1
    inpainting = next(m for m in models if m.id.endswith("v1-5-inpainting")).model_extra
    assert inpainting["requires_reference"] and inpainting["requires_mask"]
    assert inpainting["takes_mask"] and inpainting["takes_strength"]
    assert inpainting["max_references"] == 1


def test_unknown_model_is_a_400_listing_what_is_served(openai_client, emulator):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(model="midjourney-v6", prompt="a cat")
    assert caught.value.code == "model_not_found"
    for spec in MODELS:
        assert spec.short_name in caught.value.message
    with pytest.raises(openai.NotFoundError):
        openai_client.models.retrieve("midjourney-v6")
    assert emulator.calls() == []


# --- what a model cannot take ----------------------------------------------------------------


def png_file() -> tuple[str, bytes, str]:
    out = io.BytesIO()
    Image.new("RGB", (32, 32)).save(out, format="PNG")
    return ("ref.png", out.getvalue(), "image/png")


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda c: c.images.edit(model="flux-1-schnell", image=png_file(),
                                 prompt="a"), "image"),
        (lambda c: c.images.edit(model="phoenix-1.0", image=[png_file()], prompt="a"), "image"),
        (lambda c: c.images.generate(model="flux-2-klein-4b", prompt="a",
                                     extra_body={"steps": 20}), "steps"),
        (lambda c: c.images.generate(model="flux-1-schnell", prompt="a", size="512x512"), "size"),
        (lambda c: c.images.generate(model="flux-1-schnell", prompt="a",
                                     extra_body={"seed": 1}), "seed"),
        (lambda c: c.images.generate(model="flux-2-dev", prompt="a",
                                     extra_body={"negative_prompt": "x"}), "negative_prompt"),
        (lambda c: c.images.generate(model="lucid-origin", prompt="a",
                                     extra_body={"steps": 41}), "steps"),
        (lambda c: c.images.generate(model="dreamshaper-8-lcm", prompt="a",
                                     size="4096x4096"), "size"),
    ],
    ids=["schnell-refs", "phoenix-refs", "klein-steps", "schnell-size", "schnell-seed",
         "dev-negative", "lucid-steps", "dreamshaper-size"],
)  # fmt: skip
def test_a_parameter_the_model_cannot_take_is_a_400_naming_it(openai_client, emulator, call, param):
    with pytest.raises(openai.BadRequestError) as caught:
        call(openai_client)
    assert caught.value.param == param
    assert emulator.calls() == []
