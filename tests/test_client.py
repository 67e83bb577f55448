"""The Workers AI client: request shape per model, answers per model, trouble never raises."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from types import SimpleNamespace

import aiohttp
import orjson
import pytest
from aiohttp import web
from aioresponses import aioresponses
from pydantic import SecretStr

from flux_proxy.job import ImageJob, ReferenceImage
from flux_proxy.models import find_model
from flux_proxy.settings import AccountConfig
from flux_proxy.upstream.classify import OutcomeKind
from flux_proxy.upstream.client import WorkersAIClient

BASE = "https://cf.test/client/v4"
TOKEN = "tok-SECRET-0123456789"
ACCOUNT = AccountConfig(number=2, account_id="acc0123456789abcdef", token=SecretStr(TOKEN))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 64
PNG_B64 = base64.b64encode(PNG).decode()


class _Response(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.13's required `stream_writer`; give it a stub."""

    def __init__(self, method, url, **kwargs):
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class mocked_cloudflare(aioresponses):
    def add(self, url, method="GET", *args, **kwargs):
        kwargs.setdefault("response_class", _Response)
        return super().add(url, method, *args, **kwargs)


def url_for(model_id: str) -> str:
    return f"{BASE}/accounts/{ACCOUNT.account_id}/ai/run/{model_id}"


def job(model: str = "flux-2-dev", **kwargs) -> ImageJob:
    spec = find_model(model)
    assert spec is not None
    return ImageJob(model=spec, prompt=kwargs.pop("prompt", "a red fox"), **kwargs)


def ok_body(image: str = PNG_B64) -> dict:
    return {"result": {"image": image}, "success": True, "errors": [], "messages": []}


@pytest.fixture
async def client():
    c = WorkersAIClient(BASE, connect_timeout=1.0, read_timeout=2.0)
    await c.start()
    yield c
    await c.close()


def only_request(mocked: aioresponses):
    calls = [call for calls in mocked.requests.values() for call in calls]
    assert len(calls) == 1
    return calls[0].kwargs


def multipart_parts(sent: dict) -> dict[str, tuple[str | None, str, bytes]]:
    """name -> (filename, content type, bytes), parsed back from the body as sent."""
    head = f"Content-Type: {sent['headers']['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + sent["data"], policy=email.policy.HTTP)
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
    return parts


# --- request shape ------------------------------------------------------------------------


async def test_flux2_sends_multipart_with_exact_field_names_and_seed_zero(client):
    refs = (
        ReferenceImage(data=PNG, mime="image/png", width=300, height=200),
        ReferenceImage(data=JPEG, mime="image/jpeg", width=100, height=100),
    )
    the_job = job(width=1024, height=768, steps=30, guidance=4.5, seed=0, references=refs)
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-2-dev"), payload=ok_body())
        attempt = await client.run(ACCOUNT, the_job)
        sent = only_request(mocked)
    assert attempt.kind is OutcomeKind.SUCCESS
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"
    parts = multipart_parts(sent)
    assert set(parts) == {
        "prompt",
        "width",
        "height",
        "steps",
        "guidance",
        "seed",
        "input_image_0",
        "input_image_1",
    }
    assert parts["prompt"][2] == b"a red fox"
    assert parts["seed"][2] == b"0"
    assert parts["steps"][2] == b"30"
    assert parts["guidance"][2] == b"4.5"
    assert parts["input_image_0"] == ("input_image_0.png", "image/png", PNG)
    assert parts["input_image_1"] == ("input_image_1.jpg", "image/jpeg", JPEG)


async def test_flux2_prompt_alone_is_still_multipart(client):
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-2-dev"), payload=ok_body())
        await client.run(ACCOUNT, job())
        sent = only_request(mocked)
    assert sent["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    parts = multipart_parts(sent)
    assert set(parts) == {"prompt"}


async def test_klein_never_sends_steps(client):
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-2-klein-4b"), payload=ok_body())
        await client.run(ACCOUNT, job("flux-2-klein-4b", steps=9, seed=7))
        parts = multipart_parts(only_request(mocked))
    assert "steps" not in parts
    assert parts["seed"][2] == b"7"


async def test_json_models_use_upstream_names_like_num_steps(client):
    the_job = job(
        "phoenix-1.0",
        width=512,
        height=768,
        steps=12,
        guidance=3.0,
        seed=0,
        negative_prompt="blurry",
    )
    with mocked_cloudflare() as mocked:
        mocked.post(
            url_for("@cf/leonardo/phoenix-1.0"),
            body=JPEG,
            content_type="image/jpeg",
            headers={"cf-ai-neurons": "2650.5"},
        )
        attempt = await client.run(ACCOUNT, the_job)
        sent = only_request(mocked)
    assert sent["headers"]["Content-Type"] == "application/json"
    assert orjson.loads(sent["data"]) == {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "width": 512,
        "height": 768,
        "num_steps": 12,
        "guidance": 3.0,
        "seed": 0,
    }
    assert attempt.kind is OutcomeKind.SUCCESS
    assert attempt.image.data == JPEG
    assert attempt.image.mime == "image/jpeg"
    assert attempt.neurons == attempt.image.neurons == 2650.5


async def test_json_models_send_only_fields_they_take(client):
    # flux-1-schnell rejects width/height (5006) and takes no seed.
    the_job = job("flux-1-schnell", width=512, height=512, steps=4, seed=3, guidance=2.0)
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-1-schnell"), payload=ok_body())
        await client.run(ACCOUNT, the_job)
        sent = only_request(mocked)
    assert orjson.loads(sent["data"]) == {"prompt": "a red fox", "steps": 4}


# --- answers ------------------------------------------------------------------------------


async def test_base64_answer_is_passed_through_untouched(client, monkeypatch):
    # Any decode of the image on the hot path would call b64decode on the whole string.
    decoded_lengths = []
    real = base64.b64decode

    def spy(data, *args, **kwargs):
        decoded_lengths.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", spy)
    # aioresponses cannot feed bodies past aiohttp's buffer mark; the real-server test below
    # covers megabytes.
    big = base64.b64encode(PNG + b"\x07" * 30_000).decode()
    with mocked_cloudflare() as mocked:
        mocked.post(
            url_for("@cf/black-forest-labs/flux-2-dev"),
            payload=ok_body(big),
            headers={"cf-ai-neurons": "172.80"},
        )
        attempt = await client.run(ACCOUNT, job(seed=5))
    assert attempt.kind is OutcomeKind.SUCCESS
    image = attempt.image
    assert image._data is None  # never decoded to bytes
    assert image.b64 == big
    assert all(n <= 16 for n in decoded_lengths)  # at most the mime sniff
    assert image.mime == "image/png"
    assert image.account == 2
    assert image.seed == 5
    assert attempt.neurons == image.neurons == 172.8
    assert attempt.status == 200


async def test_raw_bytes_answer_as_json_envelope_is_an_error(client):
    with mocked_cloudflare() as mocked:
        mocked.post(
            url_for("@cf/stabilityai/stable-diffusion-xl-base-1.0"),
            payload={"success": True, "result": {"image": PNG_B64}},
        )
        attempt = await client.run(ACCOUNT, job("stable-diffusion-xl-base-1.0"))
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.image is None


async def test_raw_bytes_answer_png(client):
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/lykon/dreamshaper-8-lcm"), body=PNG, content_type="image/png")
        attempt = await client.run(ACCOUNT, job("dreamshaper-8-lcm"))
    assert attempt.kind is OutcomeKind.SUCCESS
    assert attempt.image.data == PNG
    assert attempt.image.mime == "image/png"
    assert attempt.neurons is None


@pytest.mark.parametrize(
    ("body", "label", "mime"),
    [
        (JPEG, "image/png", "image/jpeg"),  # SDXL-lightning, observed
        (PNG, "image/jpeg", "image/png"),
        (PNG, "application/octet-stream", "image/png"),
        (JPEG, "image/jpeg", "image/jpeg"),
    ],
)
async def test_raw_bytes_answer_type_comes_from_the_bytes_not_the_label(client, body, label, mime):
    model = "@cf/bytedance/stable-diffusion-xl-lightning"
    with mocked_cloudflare() as mocked:
        mocked.post(url_for(model), body=body, content_type=label)
        attempt = await client.run(ACCOUNT, job("stable-diffusion-xl-lightning"))
    assert attempt.kind is OutcomeKind.SUCCESS
    assert (attempt.image.mime, attempt.image.data) == (mime, body)


@pytest.mark.parametrize("body", [b"", b"<html>an error page</html>"])
async def test_raw_answer_labelled_an_image_that_is_none_is_transient(client, body):
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/lykon/dreamshaper-8-lcm"), body=body, content_type="image/png")
        attempt = await client.run(ACCOUNT, job("dreamshaper-8-lcm"))
    assert attempt.kind is OutcomeKind.TRANSIENT and attempt.image is None


@pytest.mark.parametrize(
    ("status", "kwargs", "kind"),
    [
        (200, {"payload": {"result": {}, "success": True}}, OutcomeKind.TRANSIENT),
        (200, {"payload": {"result": {"image": ""}, "success": True}}, OutcomeKind.TRANSIENT),
        (200, {"payload": {"result": {"image": 5}, "success": True}}, OutcomeKind.TRANSIENT),
        (200, {"body": b"<html>oops</html>", "content_type": "text/html"}, OutcomeKind.TRANSIENT),
        (200, {"body": b""}, OutcomeKind.TRANSIENT),
        (502, {"body": b"Bad Gateway"}, OutcomeKind.TRANSIENT),
        (
            429,
            {"payload": {"success": False, "errors": [{"code": 4006, "message": "daily"}]}},
            OutcomeKind.QUOTA_EXHAUSTED,
        ),
        (
            400,
            {"payload": {"success": False, "errors": [{"code": 5006, "message": "Bad input"}]}},
            OutcomeKind.INPUT_ERROR,
        ),
    ],
)
async def test_answers_without_an_image_are_classified(client, status, kwargs, kind):
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-2-dev"), status=status, **kwargs)
        attempt = await client.run(ACCOUNT, job())
    assert attempt.kind is kind
    assert attempt.image is None
    assert attempt.status == status


async def test_rate_limit_answer_carries_retry_after(client):
    with mocked_cloudflare() as mocked:
        mocked.post(
            url_for("@cf/black-forest-labs/flux-2-dev"),
            status=429,
            payload={"success": False, "errors": [{"code": 971, "message": "slow down"}]},
            headers={"Retry-After": "12"},
        )
        attempt = await client.run(ACCOUNT, job())
    assert attempt.kind is OutcomeKind.RATE_LIMITED
    assert attempt.retry_after == 12.0


async def test_error_message_is_trimmed_and_has_no_token(client):
    message = f"AiError: Bad input: {TOKEN} " + "y" * 5000
    with mocked_cloudflare() as mocked:
        mocked.post(
            url_for("@cf/black-forest-labs/flux-2-dev"),
            status=400,
            payload={"success": False, "errors": [{"code": 5006, "message": message}]},
        )
        attempt = await client.run(ACCOUNT, job())
    assert attempt.message.startswith("Workers AI rejected the input (code 5006): ")
    assert len(attempt.message) < 400


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ConnectionTimeoutError("connect timeout"),
    ],
)
async def test_network_trouble_is_a_transient_attempt_not_an_exception(client, exc):
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-2-dev"), exception=exc)
        attempt = await client.run(ACCOUNT, job())
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.status is None
    assert TOKEN not in attempt.message


# --- verify_token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (200, {"success": True, "result": {"status": "active"}}, True),
        (200, {"success": False, "errors": [{"code": 1000}]}, False),
        (401, {"success": False, "errors": [{"code": 1000}]}, False),
        (403, {"success": False}, False),
        (500, {"success": False}, None),
    ],
)
async def test_verify_token(client, status, payload, expected):
    with mocked_cloudflare() as mocked:
        mocked.get(f"{BASE}/user/tokens/verify", status=status, payload=payload)
        assert await client.verify_token(ACCOUNT) is expected
        sent = only_request(mocked)
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"


async def test_verify_token_unreachable_is_unknown(client):
    with mocked_cloudflare() as mocked:
        mocked.get(f"{BASE}/user/tokens/verify", exception=aiohttp.ClientConnectionError())
        assert await client.verify_token(ACCOUNT) is None


# --- against a real local server (the wire, and a real read timeout) ---------------------


@pytest.fixture
async def local_server():
    seen: list[dict] = []
    delay = {"seconds": 0.0, "image": PNG_B64}

    async def run(request: web.Request) -> web.Response:
        await asyncio.sleep(delay["seconds"])
        form = await request.post()
        seen.append(
            {
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "fields": {k: v for k, v in form.items() if isinstance(v, str)},
                "files": {
                    k: (v.filename, v.content_type, v.file.read())
                    for k, v in form.items()
                    if not isinstance(v, str)
                },
            }
        )
        return web.json_response(ok_body(delay["image"]), headers={"cf-ai-neurons": "10.5"})

    app = web.Application()
    app.router.add_post("/client/v4/accounts/{account}/ai/run/{model:.+}", run)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/client/v4", seen, delay
    await runner.cleanup()


async def test_real_server_receives_multipart_fields_and_files(local_server):
    base, seen, _ = local_server
    c = WorkersAIClient(base, connect_timeout=1.0, read_timeout=5.0)
    await c.start()
    try:
        ref = ReferenceImage(data=PNG, mime="image/png", width=10, height=10)
        attempt = await c.run(ACCOUNT, job(width=512, height=512, seed=0, references=(ref,)))
    finally:
        await c.close()
    assert attempt.kind is OutcomeKind.SUCCESS
    assert attempt.neurons == 10.5
    (call,) = seen
    assert call["path"] == f"/client/v4/accounts/{ACCOUNT.account_id}/ai/run/" + (
        "@cf/black-forest-labs/flux-2-dev"
    )
    assert call["auth"] == f"Bearer {TOKEN}"
    assert call["fields"] == {"prompt": "a red fox", "width": "512", "height": "512", "seed": "0"}
    assert call["files"] == {"input_image_0": ("input_image_0.png", "image/png", PNG)}


async def test_real_server_megabytes_of_base64_pass_through(local_server):
    base, _, control = local_server
    big = base64.b64encode(PNG + b"\x05" * 3_000_000).decode()
    control["image"] = big
    c = WorkersAIClient(base, connect_timeout=1.0, read_timeout=5.0)
    await c.start()
    try:
        attempt = await c.run(ACCOUNT, job())
    finally:
        await c.close()
    assert attempt.kind is OutcomeKind.SUCCESS
    assert attempt.image._data is None  # never decoded
    assert attempt.image.b64 == big
    assert attempt.image.mime == "image/png"


async def test_real_read_timeout_is_transient_and_maybe_billed(local_server):
    base, _, delay = local_server
    delay["seconds"] = 1.0
    c = WorkersAIClient(base, connect_timeout=1.0, read_timeout=0.1)
    await c.start()
    try:
        attempt = await c.run(ACCOUNT, job())
    finally:
        await c.close()
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.maybe_billed is True
    assert attempt.message == "Workers AI did not answer in time"


async def test_connection_refused_is_transient_and_not_billed():
    c = WorkersAIClient("http://127.0.0.1:9/client/v4", connect_timeout=1.0, read_timeout=1.0)
    await c.start()
    try:
        attempt = await c.run(ACCOUNT, job())
        verified = await c.verify_token(ACCOUNT)
    finally:
        await c.close()
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.maybe_billed is False
    assert verified is None


async def test_given_session_is_used_and_not_closed():
    async with aiohttp.ClientSession() as session:
        c = WorkersAIClient(BASE, connect_timeout=1.0, read_timeout=1.0, session=session)
        await c.start()
        assert c.session is session
        await c.close()
        assert not session.closed


async def test_base64_that_is_not_an_image_is_a_transient_failure(client):
    not_an_image = base64.b64encode(b"<html>oops</html>" * 10).decode()
    with mocked_cloudflare() as mocked:
        mocked.post(url_for("@cf/black-forest-labs/flux-2-dev"), payload=ok_body(not_an_image))
        attempt = await client.run(ACCOUNT, job())
    assert attempt.kind is OutcomeKind.TRANSIENT
    assert attempt.image is None
