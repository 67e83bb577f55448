"""Image-to-image and inpainting through the real `WorkersAIClient` and the real emulator: the
JSON body carries `image` and `mask` as byte arrays of exactly the job's images. And raw answers
whose Content-Type lies about the bytes: the type comes from the bytes, end to end through the
proxy and the openai SDK."""

from __future__ import annotations

import base64
import hashlib
import io

import httpx
import openai
import pytest
from PIL import Image

from flux_proxy.job import ImageJob, ReferenceImage
from flux_proxy.models import find_model
from flux_proxy.upstream.classify import OutcomeKind
from flux_proxy.upstream.client import WorkersAIClient

RED = (200, 40, 40)


def png(width: int, height: int, color=RED, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, format="PNG")
    return out.getvalue()


def half_white_mask(width: int, height: int) -> bytes:
    """White (repaint) on the left half, black (keep) on the right."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def reference(data: bytes) -> ReferenceImage:
    with Image.open(io.BytesIO(data)) as img:
        return ReferenceImage(data=data, mime="image/png", width=img.width, height=img.height)


@pytest.fixture
async def client():
    client = WorkersAIClient("http://unused", connect_timeout=5, read_timeout=30)
    await client.start()
    yield client
    await client.close()


async def run(client: WorkersAIClient, emulator, job: ImageJob):
    client.base_url = emulator.base_url
    (account, *_) = emulator.account_configs()
    return await client.run(account, job)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_inpainting_sends_image_and_mask_as_byte_arrays_of_the_jobs_images(client, emulator):
    source, mask = png(96, 64), half_white_mask(96, 64)
    job = ImageJob(
        model=find_model("stable-diffusion-v1-5-inpainting"),
        prompt="a blue door",
        width=384,
        height=256,
        steps=12,
        guidance=6.0,
        seed=5,
        references=(reference(source),),
        mask=reference(mask),
        strength=0.8,
    )
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.SUCCESS, attempt.message

    (call,) = emulator.calls()
    assert call["model"] == "@cf/runwayml/stable-diffusion-v1-5-inpainting"
    assert call["content_type"] == "application/json"
    assert call["fields"] == {
        "prompt": "a blue door",
        "width": 384,
        "height": 256,
        "num_steps": 12,
        "guidance": 6.0,
        "seed": 5,
        "strength": 0.8,
    }
    image, sent_mask = call["files"]["image"], call["files"]["mask"]
    assert (image["sha256"], image["bytes"]) == (sha(source), len(source))
    assert (sent_mask["sha256"], sent_mask["bytes"]) == (sha(mask), len(mask))
    assert (image["width"], image["height"], image["format"]) == (96, 64, "PNG")
    assert (sent_mask["width"], sent_mask["height"]) == (96, 64)

    # The emulator repaints only where the mask is white: the right half is still the source.
    assert attempt.image.mime == "image/png"
    result = Image.open(io.BytesIO(attempt.image.data)).convert("RGB")
    assert result.size == (384, 256)
    assert result.getpixel((300, 40)) == RED
    assert result.getpixel((40, 40)) != RED


async def test_img2img_sends_the_image_and_strength_without_a_mask(client, emulator):
    source = png(80, 80)
    job = ImageJob(
        model=find_model("stable-diffusion-v1-5-img2img"),
        prompt="in autumn",
        references=(reference(source),),
        strength=0.0,  # 0 is a strength: the image comes back unchanged
    )
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.SUCCESS, attempt.message
    (call,) = emulator.calls()
    assert call["fields"] == {"prompt": "in autumn", "strength": 0.0}
    assert set(call["files"]) == {"image"}
    assert call["files"]["image"]["sha256"] == sha(source)
    result = Image.open(io.BytesIO(attempt.image.data)).convert("RGB")
    assert result.getpixel((500, 300)) == RED


async def test_sdxl_takes_an_image_and_mask_too_as_its_schema_lists(client, emulator):
    source, mask = png(64, 64), half_white_mask(64, 64)
    job = ImageJob(
        model=find_model("stable-diffusion-xl-base-1.0"),
        prompt="x",
        references=(reference(source),),
        mask=reference(mask),
    )
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.SUCCESS, attempt.message
    assert set(emulator.calls()[0]["files"]) == {"image", "mask"}


@pytest.mark.parametrize(
    ("model", "with_image", "with_mask", "words"),
    [
        ("stable-diffusion-v1-5-img2img", False, False, "needs the image"),
        ("stable-diffusion-v1-5-inpainting", True, False, "needs a mask"),
    ],
)
async def test_img2img_and_inpainting_without_their_inputs_are_refused_upstream(
    client, emulator, model, with_image, with_mask, words
):
    job = ImageJob(
        model=find_model(model),
        prompt="x",
        references=(reference(png(64, 64)),) if with_image else (),
        mask=reference(half_white_mask(64, 64)) if with_mask else None,
    )
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.INPUT_ERROR
    assert attempt.code == 5006 and words in attempt.message


async def test_a_mask_of_another_size_is_refused(client, emulator):
    job = ImageJob(
        model=find_model("stable-diffusion-v1-5-inpainting"),
        prompt="x",
        references=(reference(png(64, 64)),),
        mask=reference(half_white_mask(32, 32)),
    )
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.INPUT_ERROR
    assert "mask must be the size of the image (64x64), got 32x32" in attempt.message


# --- raw answers: the bytes decide the type -------------------------------------------------


LIGHTNING = "@cf/bytedance/stable-diffusion-xl-lightning"


async def test_jpeg_bytes_labelled_png_are_taken_as_jpeg(client, emulator):
    emulator.fault(kind="mislabelled", model=LIGHTNING)
    job = ImageJob(model=find_model(LIGHTNING), prompt="x", width=256, height=256)
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.SUCCESS
    assert attempt.image.data.startswith(b"\xff\xd8\xff")
    assert attempt.image.mime == "image/jpeg"
    assert attempt.image.extension == "jpeg"


async def test_non_image_bytes_labelled_as_an_image_are_no_image(client, emulator):
    emulator.fault(kind="garbage", model=LIGHTNING)
    job = ImageJob(model=find_model(LIGHTNING), prompt="x", width=256, height=256)
    attempt = await run(client, emulator, job)
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.image is None and "no image" in attempt.message


def test_mislabelled_answer_end_to_end_url_format_and_conversion_follow_the_bytes(
    openai_client, emulator
):
    emulator.fault(kind="mislabelled", model=LIGHTNING, count=2)
    result = openai_client.images.generate(
        model="stable-diffusion-xl-lightning", prompt="a harbour", size="256x256"
    )
    data = base64.b64decode(result.data[0].b64_json)
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    assert result.output_format == "jpeg"
    assert result.data[0].url.endswith(".jpeg")
    served = httpx.get(result.data[0].url, timeout=10)
    assert served.headers["content-type"] == "image/jpeg"
    assert served.content == data
    (call,) = emulator.calls()
    assert call["fault"] == "mislabelled"  # the emulator did send image/png for these bytes

    # Asking for PNG converts, since the bytes are JPEG whatever the label said.
    converted = openai_client.images.generate(
        model="stable-diffusion-xl-lightning",
        prompt="a harbour",
        size="256x256",
        response_format="b64_json",
        extra_body={"output_format": "png"},
    )
    data = base64.b64decode(converted.data[0].b64_json)
    assert Image.open(io.BytesIO(data)).format == "PNG"
    assert converted.output_format == "png"


# --- 5016: terms not accepted, shown in /health ---------------------------------------------


def test_model_terms_not_accepted_skips_the_account_for_that_model_and_health_says_why(
    make_proxy, emulator
):
    proxy = make_proxy()
    client = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    emulator.fault(
        account=emulator.account_id(1),
        status=403,
        code=5016,
        message="User has not agreed to Leonardo model terms",
        count=1,
    )
    result = client.images.generate(model="phoenix-1.0", prompt="x", size="256x256")
    assert result.data[0].b64_json
    assert [c["account"] for c in emulator.calls()] == [
        emulator.account_id(1),
        emulator.account_id(2),
    ]

    health = httpx.get(proxy.url + "/health", headers=proxy.auth, timeout=10).json()
    first = next(a for a in health["accounts"] if a["number"] == 1)
    (unavailable,) = first["models_unavailable"]
    assert unavailable["model"] == "@cf/leonardo/phoenix-1.0"
    assert "not accepted this model's terms" in unavailable["reason"]
    assert "code 5016" in unavailable["reason"]
    assert first["state"] == "available"  # other models still go to account 1

    emulator.reset()
    client.images.generate(model="phoenix-1.0", prompt="x", size="256x256")
    client.images.generate(model="flux-2-klein-4b", prompt="x", size="256x256")
    assert [(c["account"], c["model"].rsplit("/", 1)[1]) for c in emulator.calls()] == [
        (emulator.account_id(2), "phoenix-1.0"),
        (emulator.account_id(1), "flux-2-klein-4b"),
    ]
