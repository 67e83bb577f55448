"""Request parsing and validation, through the real app in-process with a recording fake pool.

Every bad input must be answered with its 4xx naming the `param`, and must never reach the
pool (so never Cloudflare): each table row asserts the pool saw zero jobs.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from PIL import Image

from flux_proxy.app import create_app
from flux_proxy.clock import FrozenClock
from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage, ImageJob
from flux_proxy.settings import Settings
from flux_proxy.store.memory import MemoryStore

KEY = "unit-key"


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 160, 30)).save(out, format=fmt)
    return out.getvalue()


PNG_8 = picture(8, 8)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in its header (a decompression bomb's calling card)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))


@dataclass
class FakePool:
    """Records jobs; answers an 8x8 PNG, or raises the queued errors by call order."""

    jobs: list[ImageJob] = field(default_factory=list)
    failures: dict[int, Exception] = field(default_factory=dict)

    async def generate(self, job: ImageJob, *, request_id: str, progress=None) -> GeneratedImage:
        index = len(self.jobs)
        self.jobs.append(job)
        if index in self.failures:
            raise self.failures[index]
        return GeneratedImage.from_bytes(PNG_8, account=index + 1, neurons=1.5, seed=job.seed)

    async def snapshot(self) -> list[dict]:
        return [
            {"number": 1, "account": "abcd…wxyz", "state": "available", "until": None,
             "neurons_remaining_today": 100.0, "next_reset": "2030-01-01T00:00:00Z"}
        ]  # fmt: skip


@dataclass
class Api:
    client: httpx.AsyncClient
    pool: FakePool
    clock: FrozenClock

    async def generate(self, body=None, **kwargs) -> httpx.Response:
        if body is not None:
            kwargs["json"] = body
        return await self.client.post("/v1/images/generations", **kwargs)

    async def edit(self, **kwargs) -> httpx.Response:
        return await self.client.post("/v1/images/edits", **kwargs)


async def open_api(**overrides) -> AsyncIterator[Api]:
    pool = FakePool()
    clock = FrozenClock(1_800_000_000)
    settings = Settings(
        **{"api_master_key": KEY, "accounts": [], "state_backend": "memory", **overrides}
    )
    app = create_app(settings, clock=clock, store=MemoryStore(clock), pool=pool)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://proxy.test",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            yield Api(client, pool, clock)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    async for handle in open_api():
        yield handle


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# --- the bad-input table ---------------------------------------------------------------

BAD_JSON = [
    ({}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a cat"]}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 10_001}, "prompt"),
    ({"prompt": "x" * 2049, "model": "flux-1-schnell"}, "prompt"),
    ({"prompt": "a", "model": "dall-e-9"}, "model"),
    ({"prompt": "a", "model": 3}, "model"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "n": 11}, "n"),
    ({"prompt": "a", "n": 1.5}, "n"),
    ({"prompt": "a", "n": "two"}, "n"),
    ({"prompt": "a", "size": "big"}, "size"),
    ({"prompt": "a", "size": 1024}, "size"),
    ({"prompt": "a", "size": "100x100"}, "size"),
    ({"prompt": "a", "size": "4096x1024"}, "size"),
    ({"prompt": "a", "width": 7}, "width"),
    ({"prompt": "a", "width": 0}, "width"),
    ({"prompt": "a", "width": 1921}, "width"),
    ({"prompt": "a", "width": 1024.0}, "width"),
    ({"prompt": "a", "width": True}, "width"),
    ({"prompt": "a", "width": "wide"}, "width"),
    ({"prompt": "a", "height": 255}, "height"),
    ({"prompt": "a", "size": "1024x1024", "height": 4000}, "height"),
    ({"prompt": "a", "steps": 0}, "steps"),
    ({"prompt": "a", "steps": -3}, "steps"),
    ({"prompt": "a", "steps": 999}, "steps"),
    ({"prompt": "a", "steps": 2.5}, "steps"),
    ({"prompt": "a", "steps": False}, "steps"),
    ({"prompt": "a", "model": "flux-2-klein-4b", "steps": 10}, "steps"),
    ({"prompt": "a", "model": "flux-1-schnell", "steps": 9}, "steps"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": 1.5}, "seed"),
    ({"prompt": "a", "seed": "lucky"}, "seed"),
    ({"prompt": "a", "seed": 2**64}, "seed"),
    ({"prompt": "a", "model": "flux-1-schnell", "seed": 1}, "seed"),
    ({"prompt": "a", "guidance": 25}, "guidance"),
    ({"prompt": "a", "guidance": "high"}, "guidance"),
    ({"prompt": "a", "model": "flux-1-schnell", "guidance": 3}, "guidance"),
    ({"prompt": "a", "negative_prompt": "blur"}, "negative_prompt"),
    ({"prompt": "a", "model": "flux-1-schnell", "size": "512x512"}, "size"),
    ({"prompt": "a", "model": "flux-1-schnell", "width": 512}, "width"),
    ({"prompt": "a", "response_format": "jpg"}, "response_format"),
    ({"prompt": "a", "stream": "maybe"}, "stream"),
    ({"prompt": "a", "stream": True, "n": 0}, "n"),  # invalid streams are plain 400s
    ({"prompt": "a", "partial_images": 4}, "partial_images"),
    ({"prompt": "a", "output_format": "gif"}, "output_format"),
    ({"prompt": "a", "output_format": 5}, "output_format"),
    ({"prompt": "a", "output_compression": 101}, "output_compression"),
    ({"prompt": "a", "output_compression": "high"}, "output_compression"),
    ({"prompt": "a", "output_format": "png", "output_compression": 50}, "output_compression"),
    ({"prompt": "a", "background": "transparent"}, "background"),
    ({"prompt": "a", "quality": "ultra"}, "quality"),
    ({"prompt": "a", "mask": "anything"}, "mask"),
    ({"prompt": "a", "images": ["https://example.com/cat.png"]}, "images"),
    ({"prompt": "a", "images": ["data:image/png;base64,!!!notbase64"]}, "images"),
    ({"prompt": "a", "images": ["data:image/png,rawtext"]}, "images"),
    ({"prompt": "a", "images": [5]}, "images"),
    ({"prompt": "a", "images": [data_url(b"hello", "text/plain")]}, "images"),
    ({"prompt": "a", "images": [data_url(PNG_8[:40])]}, "images"),
    ({"prompt": "a", "images": [data_url(png_header_only(50_000, 50_000))]}, "images"),
    ({"prompt": "a", "images": [data_url(PNG_8)] * 5}, "images"),
    ({"prompt": "a", "model": "flux-1-schnell", "images": [data_url(PNG_8)]}, "images"),
]


@pytest.mark.parametrize(
    ("body", "param"), BAD_JSON, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_JSON)]
)
async def test_bad_json_input_is_400_naming_the_param_and_never_reaches_the_pool(api, body, param):
    response = await api.generate(body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert api.pool.jobs == []


async def test_unknown_model_lists_the_served_models(api):
    error = error_of(await api.generate({"prompt": "a", "model": "midjourney"}))
    assert error["code"] == "model_not_found"
    assert "flux-2-dev" in error["message"] and "flux-2-klein-4b" in error["message"]


async def test_stream_true_is_answered_with_events_never_plain_json(api):
    response = await api.generate({"prompt": "a", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: image_generation.completed" in response.text
    assert response.text.rstrip().endswith("data: [DONE]")


async def test_malformed_json_is_400_invalid_json(api):
    response = await api.generate(
        content=b'{"prompt": "a",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"
    response = await api.generate(content=b"[1, 2]", headers={"content-type": "application/json"})
    assert error_of(response)["code"] == "invalid_json"
    assert api.pool.jobs == []


async def test_unsupported_content_type_is_415(api):
    response = await api.generate(content=b"prompt", headers={"content-type": "text/csv"})
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


async def test_curl_d_json_without_content_type_is_read_as_json(api):
    response = await api.generate(
        content=b'{"prompt": "a cat", "steps": 12}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    assert api.pool.jobs[0].steps == 12


# --- size limits ---------------------------------------------------------------------------------


async def counting_body(log: list[int], chunk: bytes, chunks: int = 100):
    """A streamed body that records how many chunks the server pulled."""
    for _ in range(chunks):
        log.append(1)
        yield chunk


async def test_declared_oversize_body_is_413_before_reading_it():
    async for api in open_api(max_body_bytes=1000):
        received: list[int] = []
        response = await api.generate(
            content=counting_body(received, b"x" * 100),
            headers={"content-type": "application/json", "content-length": "10000"},
        )
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"
        assert len(received) <= 1  # answered from the header alone
        assert api.pool.jobs == []


async def test_chunked_oversize_body_is_cut_off_at_the_limit():
    async for api in open_api(max_body_bytes=1000):
        sent: list[int] = []
        response = await api.generate(
            content=counting_body(sent, b" " * 100), headers={"content-type": "application/json"}
        )
        assert response.status_code == 413
        assert len(sent) < 100
        assert api.pool.jobs == []


async def test_oversize_reference_image_is_413_naming_it():
    async for api in open_api(max_image_bytes=500):
        big = picture(64, 64, "BMP")  # ~12 KB
        response = await api.edit(
            data={"prompt": "a"}, files={"image": ("big.png", big, "image/png")}
        )
        assert response.status_code == 413
        assert error_of(response)["param"] == "image"
        response = await api.generate({"prompt": "a", "images": [data_url(big)]})
        assert response.status_code == 413
        assert error_of(response)["param"] == "images"
        assert api.pool.jobs == []


# --- multipart -----------------------------------------------------------------------------------


BAD_FORMS = [
    ("edit", {"prompt": "a"}, [], "image"),
    ("edit", {}, [("image", PNG_8)], "prompt"),
    ("edit", {"prompt": "a"}, [("image", PNG_8), ("mask", PNG_8)], "mask"),
    ("edit", {"prompt": "a"}, [("image", b"just some text")], "image"),
    ("edit", {"prompt": "a"}, [("image[]", PNG_8)] * 5, "image"),
    ("edit", {"prompt": "a", "n": "0"}, [("image", PNG_8)], "n"),
    ("edit", {"prompt": "a", "size": "10x10"}, [("image", PNG_8)], "size"),
    ("generate", {"prompt": "a", "steps": "many"}, [], "steps"),
    ("generate", {"prompt": "a", "width": "1024.5"}, [], "width"),
    ("generate", {"prompt": "a", "seed": "-4"}, [], "seed"),
    ("generate", {"prompt": "a", "stream": "sometimes"}, [], "stream"),
    ("edit", {"prompt": "a", "stream": "true", "n": "11"}, [("image", PNG_8)], "n"),
    ("generate", {"prompt": "a"}, [(f"input_image_{i}", PNG_8) for i in range(5)], "input_image_4"),
    ("generate", {"prompt": "a"}, [("photo", PNG_8)], "photo"),
    ("generate", {"prompt": "a"}, [("input_image_0", picture(8, 8, "GIF"))], "input_image_0"),
]


@pytest.mark.parametrize(("endpoint", "data", "files", "param"), BAD_FORMS)
async def test_bad_multipart_input_is_400_naming_the_param(api, endpoint, data, files, param):
    files = [(name, ("upload", content, "application/octet-stream")) for name, content in files]
    if not files:
        files = [("unused_text_part", (None, b"x"))]  # still multipart/form-data
        data = dict(data)
    response = await getattr(api, endpoint)(data=data, files=files)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param
    assert api.pool.jobs == []


# --- what valid requests turn into ---------------------------------------------------------------


async def test_seed_zero_is_a_seed_and_is_forwarded(api):
    response = await api.generate({"prompt": "a", "seed": 0})
    assert response.status_code == 200
    assert api.pool.jobs[0].seed == 0
    assert response.json()["seed"] == 0


async def test_n_images_get_consecutive_seeds_from_a_given_seed(api):
    body = (await api.generate({"prompt": "a", "n": 3, "seed": 41})).json()
    assert [job.seed for job in api.pool.jobs] == [41, 42, 43]
    assert body["seeds"] == [41, 42, 43]
    assert len(body["data"]) == 3


async def test_n_images_without_a_seed_get_distinct_random_seeds(api):
    await api.generate({"prompt": "a", "n": 4})
    seeds = [job.seed for job in api.pool.jobs]
    assert len(set(seeds)) == 4 and all(isinstance(s, int) and s >= 0 for s in seeds)


async def test_json_object_prompt_goes_upstream_as_compact_json_text(api):
    prompt = {"scene": "futuristic city", "subjects": [{"type": "robot"}], "mood": "café"}
    body = (await api.generate({"prompt": prompt})).json()
    sent = api.pool.jobs[0].prompt
    assert orjson.loads(sent) == prompt
    assert " " not in sent.replace("futuristic city", "")
    assert body["data"][0]["revised_prompt"] == sent


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({}, (1024, 768)),
        ({"size": "auto"}, (1024, 768)),
        ({"size": "512x768"}, (512, 768)),
        ({"size": "1024x1024", "width": 640}, (640, 1024)),
        ({"width": 1920, "height": 1080}, (1920, 1080)),
        ({"width": "800", "height": "600"}, (800, 600)),
    ],
)
async def test_width_and_height_come_from_fields_then_size_then_the_model(api, fields, size):
    response = await api.generate({"prompt": "a", **fields})
    assert response.status_code == 200, response.text
    job = api.pool.jobs[0]
    assert (job.width, job.height) == size
    assert response.json()["size"] == f"{size[0]}x{size[1]}"


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        (None, "@cf/black-forest-labs/flux-2-dev"),
        ("dall-e-3", "@cf/black-forest-labs/flux-2-dev"),
        ("flux-2-klein-4b", "@cf/black-forest-labs/flux-2-klein-4b"),
        ("@cf/black-forest-labs/flux-2-klein-9b", "@cf/black-forest-labs/flux-2-klein-9b"),
    ],
)
async def test_model_by_full_id_short_name_alias_or_default(api, name, model_id):
    body = {"prompt": "a"} if name is None else {"prompt": "a", "model": name}
    assert (await api.generate(body)).json()["model"] == model_id
    assert api.pool.jobs[0].model.id == model_id


async def test_fixed_step_model_accepts_its_own_step_count_and_sends_none(api):
    response = await api.generate({"prompt": "a", "model": "flux-2-klein-4b", "steps": 4})
    assert response.status_code == 200
    assert api.pool.jobs[0].steps is None


async def test_default_steps_and_ignored_openai_fields(api):
    body = {"prompt": "a", "quality": "hd", "style": "vivid", "user": "u1", "background": "auto",
            "moderation": "low", "output_compression": 80}  # fmt: skip
    assert (await api.generate(body)).status_code == 200
    assert api.pool.jobs[0].steps == 25


async def test_seed_style_multipart_fields_are_coerced_and_input_images_kept_in_order(api):
    files = [
        ("input_image_1", ("b.png", picture(10, 10), "image/png")),
        ("input_image_0", ("a.png", picture(20, 20), "image/png")),
    ]
    data = {"prompt": "the person in image 0", "steps": "30", "width": "1024",
            "height": "1024", "seed": "7"}  # fmt: skip
    response = await api.generate(data=data, files=files)
    assert response.status_code == 200, response.text
    job = api.pool.jobs[0]
    assert (job.steps, job.width, job.height, job.seed) == (30, 1024, 1024, 7)
    assert [(r.width, r.height) for r in job.references] == [(20, 20), (10, 10)]


async def test_edit_accepts_repeated_image_and_image_brackets_and_sniffs_nameless_files(api):
    files = [("image[]", ("upload", picture(30, 30, "JPEG"), "application/octet-stream"))] * 3
    response = await api.edit(data={"prompt": "merge"}, files=files)
    assert response.status_code == 200, response.text
    assert [r.mime for r in api.pool.jobs[0].references] == ["image/jpeg"] * 3
    files = [("image", ("a.webp", picture(12, 12, "WEBP"), "image/webp"))] * 2
    assert (await api.edit(data={"prompt": "merge"}, files=files)).status_code == 200
    assert len(api.pool.jobs[1].references) == 2


async def test_large_reference_is_scaled_below_512_and_small_one_kept_byte_for_byte(api):
    small = picture(300, 200)
    response = await api.generate(
        {"prompt": "a", "images": [data_url(picture(1024, 768)), data_url(small)]}
    )
    assert response.status_code == 200, response.text
    big_ref, small_ref = api.pool.jobs[0].references
    assert big_ref.width < 512 and big_ref.height < 512
    assert Image.open(io.BytesIO(big_ref.data)).size == (big_ref.width, big_ref.height)
    assert small_ref.data == small


# --- responses -----------------------------------------------------------------------------------


async def test_default_response_has_both_b64_json_and_a_working_url(api):
    response = await api.generate({"prompt": "a"})
    body = response.json()
    item = body["data"][0]
    assert base64.b64decode(item["b64_json"]) == PNG_8
    assert item["url"].startswith("http://proxy.test/v1/images/files/")
    image = await api.client.get(item["url"], headers={"Authorization": ""})
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content == PNG_8
    assert body["object"] == "image.generation" and body["id"].startswith("img_")
    assert body["created"] == 1_800_000_000
    assert body["account_used"] == 1 and body["output_format"] == "png"
    assert body["usage"]["neurons"] == 1.5 and body["usage"]["total_tokens"] == 0


async def test_response_format_picks_one_form(api):
    item = (await api.generate({"prompt": "a", "response_format": "b64_json"})).json()["data"][0]
    assert "b64_json" in item and "url" not in item
    item = (await api.generate({"prompt": "a", "response_format": "url"})).json()["data"][0]
    assert "url" in item and "b64_json" not in item


async def test_url_expires_after_the_ttl(api):
    url = (await api.generate({"prompt": "a", "response_format": "url"})).json()["data"][0]["url"]
    api.clock.advance(3601)
    response = await api.client.get(url)
    assert response.status_code == 404
    assert error_of(response)["code"] == "image_not_found"


async def test_forwarded_host_is_ignored_unless_the_peer_is_trusted():
    headers = {"x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}
    async for api in open_api():
        url = (await api.generate({"prompt": "a"}, headers=headers)).json()["data"][0]["url"]
        assert url.startswith("http://proxy.test/")
    async for api in open_api(trusted_proxies="127.0.0.1"):  # ASGITransport's peer
        url = (await api.generate({"prompt": "a"}, headers=headers)).json()["data"][0]["url"]
        assert url.startswith("https://evil.example/")
    async for api in open_api(public_base_url="https://img.example.com/"):
        url = (await api.generate({"prompt": "a"}, headers=headers)).json()["data"][0]["url"]
        assert url.startswith("https://img.example.com/v1/images/files/")


async def test_partial_failure_returns_the_images_made_and_the_failures(api):
    api.pool.failures[1] = ApiError(502, "upstream failed", code="upstream_unavailable")
    response = await api.generate({"prompt": "a", "n": 3, "seed": 10})
    assert response.status_code == 200
    body = response.json()
    assert len(body["data"]) == 2
    assert body["seeds"] == [10, 12]
    assert body["errors"] == [
        {"index": 1, "error": {"message": "upstream failed", "type": "api_error",
                               "param": None, "code": "upstream_unavailable"}}
    ]  # fmt: skip


async def test_when_every_image_fails_the_first_error_is_returned_with_its_headers(api):
    for index in range(2):
        api.pool.failures[index] = ApiError(
            429, f"all parked {index}", code="accounts_exhausted", headers={"Retry-After": "120"}
        )
    response = await api.generate({"prompt": "a", "n": 2})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "120"
    assert error_of(response)["message"] == "all parked 0"


async def test_unexpected_exception_is_an_openai_shaped_500_without_a_trace(api):
    api.pool.failures[0] = RuntimeError("secret internals at 0xdeadbeef")
    response = await api.generate({"prompt": "a"})
    assert response.status_code == 500
    error = error_of(response)
    assert "0xdeadbeef" not in response.text and "Traceback" not in response.text
    assert error["code"] == "internal_error"


async def test_unknown_route_and_wrong_method_are_openai_shaped(api):
    response = await api.client.get("/v1/nothing-here")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = await api.client.get("/v1/images/generations")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


async def test_request_id_is_generated_or_a_sane_one_echoed(api):
    response = await api.generate({"prompt": "a"})
    assert response.headers["x-request-id"].startswith("req_")
    response = await api.generate({}, headers={"x-request-id": "caller-123"})
    assert response.headers["x-request-id"] == "caller-123"
    response = await api.generate({}, headers={"x-request-id": "bad id\twith junk"})
    assert response.headers["x-request-id"].startswith("req_")


async def test_models_list_is_openai_shaped_with_created_in_seconds(api):
    body = (await api.client.get("/v1/models")).json()
    assert body["object"] == "list"
    dev = next(m for m in body["data"] if m["id"] == "@cf/black-forest-labs/flux-2-dev")
    assert dev["object"] == "model" and dev["owned_by"] == "black-forest-labs"
    assert 1_600_000_000 < dev["created"] < 2_000_000_000
    assert dev["max_references"] == 4 and dev["size_range"] == [256, 1920]
    klein = next(m for m in body["data"] if m["short_name"] == "flux-2-klein-4b")
    assert klein["fixed_steps"] == 4
