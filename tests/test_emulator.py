"""The offline Workers AI emulator behaves like Cloudflare's REST API, as documented."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from datetime import UTC, datetime

import aiohttp
import pytest
from PIL import Image

from flux_proxy.clock import FrozenClock
from flux_proxy.emulator import (
    DEMO_ACCOUNTS,
    create_emulator_app,
    demo_account_configs,
    start_emulator,
)
from flux_proxy.emulator.server import banner
from flux_proxy.models import MODELS, find_model

ACCOUNT_A, ACCOUNT_B = "a" * 32, "b" * 32
TOKENS = {ACCOUNT_A: "token-for-a", ACCOUNT_B: "token-for-b"}
DEV = "@cf/black-forest-labs/flux-2-dev"
KLEIN = "@cf/black-forest-labs/flux-2-klein-4b"
SCHNELL = "@cf/black-forest-labs/flux-1-schnell"
LUCID = "@cf/leonardo/lucid-origin"
PHOENIX = "@cf/leonardo/phoenix-1.0"
SDXL = "@cf/stabilityai/stable-diffusion-xl-base-1.0"
ALLOCATION_TEXT = (
    "you have used up your daily free allocation of 10,000 neurons, please upgrade to "
    "Cloudflare's Workers Paid plan if you would like to continue usage."
)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Emu:
    """One running emulator and a session to talk to it."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, clock: FrozenClock):
        self.session = session
        self.base = base_url
        self.root = base_url.removesuffix("/client/v4")
        self.clock = clock

    def run(self, model: str, *, account: str = ACCOUNT_A, token: str | None = None, **kwargs):
        headers = {"Authorization": f"Bearer {token or TOKENS.get(account, 'nobody')}"}
        headers.update(kwargs.pop("headers", {}))
        url = f"{self.base}/accounts/{account}/ai/run/{model}"
        return self.session.post(url, headers=headers, **kwargs)

    async def control(self, method: str, path: str, body=None) -> dict:
        async with self.session.request(method, f"{self.root}/__emulator/{path}", json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def calls(self) -> list[dict]:
        return (await self.control("GET", "calls"))["calls"]


async def open_emulator(**options):
    clock = options.pop("clock", None) or FrozenClock(at("2025-03-01T12:00:00"))
    runner, base_url = await start_emulator("127.0.0.1", 0, TOKENS, clock=clock, **options)
    session = aiohttp.ClientSession()
    return runner, Emu(session, base_url, clock)


@pytest.fixture
async def emu():
    runner, emulator = await open_emulator()
    yield emulator
    await emulator.session.close()
    await runner.cleanup()


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


def form(fields: dict | None = None, files: dict[str, bytes] | None = None) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in (fields or {}).items():
        data.add_field(name, str(value))
    for name, blob in (files or {}).items():
        data.add_field(name, blob, filename=f"{name}.png", content_type="image/png")
    return data


def body_for(model: str, fields: dict, files: dict[str, bytes] | None = None) -> dict:
    """The keyword arguments that send `fields` the way `model` wants them (with the image and
    mask that img2img and inpainting models cannot do without)."""
    spec = find_model(model)
    assert spec is not None
    if spec.body == "multipart":
        return {"data": form(fields, files)}
    if spec.requires_reference:
        fields = {"image": list(picture(64, 64)), **fields}
    if spec.requires_mask:
        fields = {"mask": list(picture(64, 64)), **fields}
    return {"json": fields}


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, int, str]:
    body = await response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    (error,) = body["errors"]
    return response.status, error["code"], error["message"]


async def image_of(response: aiohttp.ClientResponse) -> tuple[Image.Image, bytes]:
    """Decode a success answer in whichever format the model uses."""
    assert response.status == 200, await response.text()
    if response.content_type == "application/json":
        body = await response.json()
        assert body["success"] is True and body["errors"] == []
        raw = base64.b64decode(body["result"]["image"], validate=True)
    else:
        raw = await response.read()
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image, raw


# --- identity and authentication -------------------------------------------------------------


async def test_root_says_it_is_the_flux_proxy_emulator_not_cloudflare(emu):
    async with emu.session.get(emu.root + "/") as response:
        body = await response.json()
        assert response.headers["x-emulator"] == "flux-proxy"
    assert "emulator" in body["service"]
    assert "NOT Cloudflare" in body["note"]


async def test_start_emulator_on_port_zero_reports_the_real_port(emu):
    assert emu.base.startswith("http://127.0.0.1:")
    assert emu.base.endswith("/client/v4")
    assert not emu.base.startswith("http://127.0.0.1:0/")


async def test_token_verify_accepts_known_tokens_and_rejects_others(emu):
    url = emu.base + "/user/tokens/verify"
    async with emu.session.get(url, headers={"Authorization": "Bearer token-for-b"}) as response:
        body = await response.json()
        assert response.status == 200
    assert body["success"] is True and body["result"]["status"] == "active"
    assert "token-for-b" not in json.dumps(body)
    async with emu.session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
        assert await error_of(response) == (401, 1000, "Invalid API Token")
    async with emu.session.get(url) as response:
        assert (await error_of(response))[:2] == (401, 1000)
    assert (await emu.control("GET", "usage"))["accounts"][ACCOUNT_B]["neurons_used"] == 0


@pytest.mark.parametrize(
    ("account", "token"),
    [(ACCOUNT_A, "wrong"), (ACCOUNT_A, "token-for-b"), ("c" * 32, "token-for-a")],
    ids=["bad-token", "other-accounts-token", "unknown-account"],
)
async def test_run_with_a_token_not_of_that_account_is_401_10000(emu, account, token):
    async with emu.run(DEV, account=account, token=token, data=form({"prompt": "x"})) as response:
        assert await error_of(response) == (401, 10000, "Authentication error")
        assert "cf-ai-neurons" not in response.headers


async def test_run_without_authorization_header_is_401(emu):
    url = f"{emu.base}/accounts/{ACCOUNT_A}/ai/run/{DEV}"
    async with emu.session.post(url, data=form({"prompt": "x"})) as response:
        assert (await error_of(response))[:2] == (401, 10000)


# --- answers per model -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", MODELS, ids=[spec.short_name for spec in MODELS])
async def test_each_model_answers_an_image_of_its_default_size_in_its_own_format(emu, spec):
    async with emu.run(spec.id, **body_for(spec.id, {"prompt": "a lighthouse"})) as response:
        image, _ = await image_of(response)
        content_type = response.content_type
        neurons = response.headers.get("cf-ai-neurons")
        assert response.headers["x-emulator"] == "flux-proxy"
        assert response.headers["cf-ray"]
    assert image.size == (spec.default_width, spec.default_height)
    if spec.answer == "raw_bytes":
        assert content_type == spec.answer_mime
    else:
        assert content_type == "application/json"
    if spec.answer_mime:
        assert Image.MIME[image.format] == spec.answer_mime
    expected = spec.estimate_neurons(None, None, None)
    used = (await emu.control("GET", "usage"))["accounts"][ACCOUNT_A]["neurons_used"]
    assert used == pytest.approx(expected)  # billed with the figure it reports
    if spec.reports_neurons:
        assert neurons == f"{expected:.2f}"
    else:  # phoenix-1.0, as observed: billed, but no header
        assert neurons is None


async def test_flux2_default_size_is_1024_by_768_png(emu):
    async with emu.run(DEV, data=form({"prompt": "a fox"})) as response:
        image, raw = await image_of(response)
    assert image.size == (1024, 768)
    assert raw.startswith(b"\x89PNG")


async def test_flux2_answers_the_requested_size(emu):
    fields = {"prompt": "a fox", "width": 640, "height": 1920, "steps": 4, "seed": 7}
    async with emu.run(DEV, data=form(fields)) as response:
        image, _ = await image_of(response)
    assert image.size == (640, 1920)


async def test_flux2_rejects_a_json_body_with_5006(emu):
    async with emu.run(DEV, json={"prompt": "a fox"}) as response:
        status, code, message = await error_of(response)
    assert (status, code) == (400, 5006)
    assert message.startswith("AiError: Bad input:")


async def test_same_model_prompt_seed_and_size_give_the_same_image(emu):
    async def fetch(prompt: str) -> bytes:
        async with emu.run(DEV, data=form({"prompt": prompt, "seed": 3, "width": 256})) as r:
            return (await image_of(r))[1]

    first, again, other = await fetch("red"), await fetch("red"), await fetch("blue")
    assert first == again
    assert first != other


# --- prices ----------------------------------------------------------------------------------


async def test_flux2_dev_neurons_count_output_and_input_tiles_per_step(emu):
    fields = {"prompt": "edit", "width": 1024, "height": 1024, "steps": 25}
    files = {"input_image_0": picture(256, 256)}
    async with emu.run(DEV, data=form(fields, files)) as response:
        await image_of(response)
        # 4 output tiles x 37.5 x 25 steps + 0.25 input tile x 18.75 x 25 steps
        assert response.headers["cf-ai-neurons"] == "3867.19"


async def test_klein_neurons_ignore_steps_and_schnell_counts_steps(emu):
    async with emu.run(KLEIN, data=form({"prompt": "x", "width": 512, "height": 512})) as r:
        await image_of(r)
        assert r.headers["cf-ai-neurons"] == "26.05"
    async with emu.run(SCHNELL, json={"prompt": "x", "steps": 8}) as r:
        await image_of(r)
        # the per-step price is per tile per step: 4 tiles x (4.8 + 9.6 x 8 steps)
        assert r.headers["cf-ai-neurons"] == f"{4 * 4.8 + 4 * 8 * 9.6:.2f}" == "326.40"


async def test_successful_calls_add_their_price_to_the_accounts_usage(emu):
    for _ in range(2):
        async with emu.run(KLEIN, data=form({"prompt": "x", "width": 512, "height": 512})) as r:
            await image_of(r)
    usage = await emu.control("GET", "usage")
    assert usage["accounts"][ACCOUNT_A]["neurons_used"] == pytest.approx(52.1)
    assert usage["accounts"][ACCOUNT_B]["neurons_used"] == 0
    assert usage["day"] == "2025-03-01"


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "fields", "code"),
    [
        (DEV, {"width": 512}, 5006),  # no prompt
        (DEV, {"prompt": "x", "width": 255}, 5006),
        (DEV, {"prompt": "x", "height": 1921}, 5006),
        (DEV, {"prompt": "x", "width": "wide"}, 5006),
        (DEV, {"prompt": "x", "steps": 0}, 5006),
        (DEV, {"prompt": "x", "steps": 51}, 5006),
        (DEV, {"prompt": "x", "guidance": 20.5}, 5006),
        (DEV, {"prompt": "x", "seed": -1}, 5006),
        (DEV, {"prompt": "x", "seed": "1.5"}, 5006),
        (DEV, {"prompt": "x", "num_steps": 4}, 5006),
        (KLEIN, {"prompt": "x", "steps": 4}, 5006),
        (SCHNELL, {"prompt": "x", "width": 1024}, 5006),
        (SCHNELL, {"prompt": "x", "steps": 9}, 5006),
        (SCHNELL, {"prompt": "x", "seed": 1}, 5006),
        (SCHNELL, {"prompt": "x" * 2049}, 5006),
        (SCHNELL, {"prompt": ""}, 5006),
        (LUCID, {"prompt": "x", "width": 2501}, 5006),
        (LUCID, {"prompt": "x", "width": 1024.0}, 5006),
        (PHOENIX, {"prompt": "x", "steps": 10}, 5006),
        (PHOENIX, {"prompt": "x", "guidance": 1.5}, 5006),
        (SDXL, {"prompt": "x", "num_steps": 21}, 5006),
        (SDXL, {"prompt": 42}, 5006),
    ],
)
async def test_invalid_parameters_are_rejected_like_workers_ai(emu, model, fields, code):
    async with emu.run(model, **body_for(model, fields)) as response:
        status, got, message = await error_of(response)
    assert (status, got) == (400, code)
    assert message.startswith("AiError: Bad input:")


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (LUCID, {"prompt": "x", "width": 2500, "height": 256, "steps": 40, "guidance": 10}),
        (PHOENIX, {"prompt": "x", "num_steps": 50, "guidance": 2, "negative_prompt": "blur"}),
        (SCHNELL, {"prompt": "x" * 2048, "steps": 1}),
        (DEV, {"prompt": "x", "width": 1920, "height": 256, "guidance": 0, "seed": 0}),
    ],
)
async def test_parameters_at_the_edges_of_their_ranges_are_accepted(emu, model, fields):
    async with emu.run(model, **body_for(model, fields)) as response:
        image, _ = await image_of(response)
    if "width" in fields:
        assert image.size == (fields["width"], fields["height"])


async def test_unknown_model_is_400_5007(emu):
    async with emu.run("@cf/nobody/no-model", json={"prompt": "x"}) as response:
        status, code, message = await error_of(response)
    assert (status, code) == (400, 5007)
    assert "No such model @cf/nobody/no-model" in message


async def test_short_model_names_are_not_cloudflare_model_ids(emu):
    async with emu.run("flux-2-dev", data=form({"prompt": "x"})) as response:
        assert (await error_of(response))[:2] == (400, 5007)


async def test_json_model_rejects_multipart_and_malformed_json(emu):
    async with emu.run(LUCID, data=form({"prompt": "x"})) as response:
        assert (await error_of(response))[:2] == (400, 5006)
    headers = {"Content-Type": "application/json"}
    async with emu.run(LUCID, data=b'{"prompt": ', headers=headers) as response:
        assert (await error_of(response))[:2] == (400, 5004)


async def test_up_to_four_input_images_are_accepted_and_a_fifth_is_not(emu):
    four = {f"input_image_{n}": picture(64 + n, 64) for n in range(4)}
    async with emu.run(DEV, data=form({"prompt": "mix image 0 and image 3"}, four)) as response:
        await image_of(response)
    five = {**four, "input_image_4": picture(64, 64)}
    async with emu.run(DEV, data=form({"prompt": "x"}, five)) as response:
        assert (await error_of(response))[:2] == (400, 5006)


async def test_undecodable_input_image_is_3030_naming_its_index(emu):
    files = {"input_image_0": picture(64, 64), "input_image_1": b"\x89PNG\r\n\x1a\nnot really"}
    async with emu.run(DEV, data=form({"prompt": "x"}, files)) as response:
        assert await error_of(response) == (
            400,
            3030,
            "Invalid input image[1]: unable to decode image file",
        )


async def test_truncated_input_image_is_3030(emu):
    files = {"input_image_0": picture(300, 300, "JPEG")[:400]}
    async with emu.run(KLEIN, data=form({"prompt": "x"}, files)) as response:
        assert (await error_of(response))[:2] == (400, 3030)


@pytest.mark.parametrize(("width", "height"), [(512, 100), (100, 512), (800, 800)])
async def test_input_images_must_be_smaller_than_512_by_512(emu, width, height):
    files = {"input_image_0": picture(width, height)}
    async with emu.run(DEV, data=form({"prompt": "x"}, files)) as response:
        status, code, message = await error_of(response)
    assert (status, code) == (400, 5006)
    assert f"{width}x{height}" in message


async def test_input_image_of_511_by_511_is_accepted(emu):
    files = {"input_image_0": picture(511, 511, "JPEG")}
    async with emu.run(KLEIN, data=form({"prompt": "x"}, files)) as response:
        await image_of(response)


async def test_body_over_the_limit_is_413_3006():
    runner, emu = await open_emulator(max_body_bytes=50_000)
    try:
        files = {"input_image_0": b"\0" * 60_000}
        async with emu.run(DEV, data=form({"prompt": "x"}, files)) as response:
            assert (await error_of(response))[:2] == (413, 3006)
        async with emu.run(LUCID, json={"prompt": "x" * 60_000}) as response:
            assert (await error_of(response))[:2] == (413, 3006)
        assert [call["status"] for call in await emu.calls()] == [413, 413]
    finally:
        await emu.session.close()
        await runner.cleanup()


# --- daily allocation and rate limit ---------------------------------------------------------


async def test_exhausted_account_gets_3036_until_utc_midnight():
    clock = FrozenClock(at("2025-03-01T23:58:00"))
    runner, emu = await open_emulator(clock=clock)
    fields = {"prompt": "x", "width": 1024, "height": 1024, "steps": 25}  # 3,750 neurons
    try:
        for _ in range(3):  # 0, 3750, 7500 used before each: all under 10,000
            async with emu.run(DEV, data=form(fields)) as response:
                await image_of(response)
        async with emu.run(DEV, data=form(fields)) as response:
            assert await error_of(response) == (429, 3036, ALLOCATION_TEXT)
        async with emu.run(DEV, account=ACCOUNT_B, data=form(fields)) as response:
            await image_of(response)  # another account is untouched
        usage = await emu.control("GET", "usage")
        assert usage["accounts"][ACCOUNT_A]["neurons_used"] == 11_250
        assert usage["accounts"][ACCOUNT_A]["remaining"] == 0
        assert usage["next_reset"] == "2025-03-02T00:00:00Z"

        clock.set(at("2025-03-01T23:59:59"))
        async with emu.run(DEV, data=form(fields)) as response:
            assert (await error_of(response))[1] == 3036
        clock.set(at("2025-03-02T00:00:00"))
        async with emu.run(DEV, data=form(fields)) as response:
            await image_of(response)
    finally:
        await emu.session.close()
        await runner.cleanup()


async def test_usage_control_sets_todays_neurons(emu):
    await emu.control("POST", "usage", {"account": ACCOUNT_A, "neurons": 9_999.99})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)  # below the allocation: the call runs and may overshoot
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        assert (await error_of(response))[:2] == (429, 3036)
    await emu.control("POST", "usage", {"account": ACCOUNT_B, "neurons": 10_000})
    async with emu.run(KLEIN, account=ACCOUNT_B, data=form({"prompt": "x"})) as response:
        assert (await error_of(response))[:2] == (429, 3036)  # reaching it is enough


async def test_per_account_allocation_override_and_unlimited_accounts(emu):
    await emu.control("POST", "usage", {"account": ACCOUNT_A, "neurons": 50_000})
    await emu.control("POST", "usage", {"account": ACCOUNT_A, "daily_neurons": 0})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)
    usage = await emu.control("GET", "usage")
    assert usage["accounts"][ACCOUNT_A]["daily_neurons"] is None
    assert usage["accounts"][ACCOUNT_A]["remaining"] is None


async def test_allocation_message_states_the_configured_allocation():
    runner, emu = await open_emulator(daily_neurons=20_000)
    try:
        await emu.control("POST", "usage", {"account": ACCOUNT_A, "neurons": 20_000})
        async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
            _, code, message = await error_of(response)
        assert code == 3036
        assert "daily free allocation of 20,000 neurons" in message
    finally:
        await emu.session.close()
        await runner.cleanup()


async def test_more_than_the_per_minute_limit_is_429_with_retry_after():
    runner, emu = await open_emulator(rate_limit_per_minute=3)
    try:
        for _ in range(3):
            async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
                await image_of(response)
        async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
            status, code, _ = await error_of(response)
            retry_after = int(response.headers["Retry-After"])
        assert status == 429 and code not in (3036, 4006, 3040)
        assert 1 <= retry_after <= 60
        async with emu.run(KLEIN, account=ACCOUNT_B, data=form({"prompt": "x"})) as response:
            await image_of(response)  # the limit is per account
        emu.clock.advance(60)
        async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
            await image_of(response)
    finally:
        await emu.session.close()
        await runner.cleanup()


# --- faults ----------------------------------------------------------------------------------


async def test_error_fault_answers_its_status_code_message_and_retry_after(emu):
    rule = {"kind": "error", "status": 429, "code": 3040, "message": "Capacity", "count": 1}
    await emu.control("POST", "faults", {**rule, "retry_after": 5, "account": ACCOUNT_A})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        assert await error_of(response) == (429, 3040, "Capacity")
        assert response.headers["Retry-After"] == "5"
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)  # count 1: only the first call failed


async def test_fault_for_one_account_leaves_others_alone(emu):
    await emu.control("POST", "faults", {"kind": "error", "status": 500, "account": ACCOUNT_B})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)
    for _ in range(2):  # count null: every call
        async with emu.run(KLEIN, account=ACCOUNT_B, data=form({"prompt": "x"})) as response:
            assert (await error_of(response))[0] == 500


async def test_error_fault_without_message_uses_cloudflares_text(emu):
    await emu.control("POST", "faults", {"kind": "error", "status": 429, "code": 3036})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        assert await error_of(response) == (429, 3036, ALLOCATION_TEXT)


async def test_drop_fault_closes_the_connection_without_an_answer(emu):
    await emu.control("POST", "faults", {"kind": "drop", "count": 1})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
            await response.read()
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)
    calls = await emu.calls()
    assert calls[0]["fault"] == "drop" and calls[0]["status"] is None
    assert calls[1]["status"] == 200


@pytest.mark.parametrize(("model", "body"), [(KLEIN, "data"), (SDXL, "json")])
async def test_garbage_fault_answers_200_with_a_body_that_is_not_what_it_claims(emu, model, body):
    await emu.control("POST", "faults", {"kind": "garbage"})
    async with emu.run(model, **body_for(model, {"prompt": "x"})) as response:
        assert response.status == 200
        raw = await response.read()
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(OSError):
        Image.open(io.BytesIO(raw))


async def test_no_image_fault_answers_success_without_an_image(emu):
    await emu.control("POST", "faults", {"kind": "no_image"})
    async with emu.run(DEV, data=form({"prompt": "x"})) as response:
        body = await response.json()
        assert response.status == 200
        assert "cf-ai-neurons" not in response.headers
    assert body["success"] is True and body["result"] == {}


async def test_timeout_fault_answers_nothing_before_the_clients_deadline(emu):
    await emu.control("POST", "faults", {"kind": "timeout", "count": 1})
    with pytest.raises(asyncio.TimeoutError):
        async with emu.run(
            KLEIN, data=form({"prompt": "x"}), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as response:
            await response.read()


async def test_timeout_fault_with_latency_answers_late_but_normally(emu):
    await emu.control("POST", "faults", {"kind": "timeout", "latency": 0.2, "count": 1})
    started = asyncio.get_running_loop().time()
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)
    assert asyncio.get_running_loop().time() - started >= 0.2


async def test_fault_rate_is_random_but_reproducible():
    async def pattern() -> list[int]:
        runner, emu = await open_emulator()
        try:
            await emu.control("POST", "faults", {"kind": "error", "status": 503, "rate": 0.5})
            statuses = []
            for _ in range(20):
                async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
                    statuses.append(response.status)
            return statuses
        finally:
            await emu.session.close()
            await runner.cleanup()

    first, second = await pattern(), await pattern()
    assert first == second
    assert set(first) == {200, 503}


async def test_bad_fault_rules_are_refused(emu):
    url = emu.root + "/__emulator/faults"
    for rule in ({"kind": "explode"}, {"kind": "error", "rate": 2}, {"kind": "error", "x": 1}):
        async with emu.session.post(url, json=rule) as response:
            assert response.status == 400
    assert (await emu.control("GET", "faults"))["faults"] == []


async def test_configured_latency_delays_every_call(emu):
    await emu.control("POST", "config", {"latency": 0.2})
    started = asyncio.get_running_loop().time()
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)
    assert asyncio.get_running_loop().time() - started >= 0.2


# --- call log and reset ----------------------------------------------------------------------


async def test_call_log_records_fields_files_status_and_code(emu):
    fields = {"prompt": "put image 0 on a beach", "width": 512, "height": 512, "seed": 9}
    files = {"input_image_0": picture(300, 200)}
    async with emu.run(DEV, data=form(fields, files)) as response:
        await image_of(response)
    async with emu.run(DEV, token="wrong", data=form({"prompt": "x"})) as response:
        await response.read()
    ok, refused = await emu.calls()
    assert ok["account"] == ACCOUNT_A and ok["model"] == DEV
    assert ok["content_type"] == "multipart/form-data"
    assert ok["fields"] == {key: str(value) for key, value in fields.items()}
    image = ok["files"]["input_image_0"]
    assert image["bytes"] == len(files["input_image_0"])
    assert (image["mime"], image["width"], image["height"]) == ("image/png", 300, 200)
    assert (ok["status"], ok["code"]) == (200, None)
    assert ok["neurons"] == pytest.approx(
        find_model(DEV).estimate_neurons(512, 512, None, ((300, 200),))
    )
    assert (refused["status"], refused["code"]) == (401, 10000)
    everything = json.dumps(await emu.control("GET", "calls"))
    assert not any(token in everything for token in TOKENS.values())


async def test_json_calls_are_logged_with_their_fields(emu):
    async with emu.run(SCHNELL, json={"prompt": "p", "steps": 2}) as response:
        await image_of(response)
    (call,) = await emu.calls()
    assert call["content_type"] == "application/json"
    assert call["fields"] == {"prompt": "p", "steps": 2}
    assert call["files"] == {}


async def test_reset_clears_faults_calls_and_usage(emu):
    await emu.control("POST", "faults", {"kind": "error", "status": 500})
    await emu.control("POST", "usage", {"account": ACCOUNT_A, "neurons": 10_000})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        assert response.status == 500
    await emu.control("POST", "reset")
    assert await emu.calls() == []
    assert (await emu.control("GET", "faults"))["faults"] == []
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        await image_of(response)


async def test_unknown_cloudflare_path_is_a_v4_404(emu):
    async with emu.session.get(emu.base + "/accounts/x/nothing") as response:
        status, code, _ = await error_of(response)
    assert status == 404 and code == 7003


# --- demo accounts and banner ----------------------------------------------------------------


def test_demo_accounts_are_three_numbered_accounts():
    configs = demo_account_configs()
    assert [config.number for config in configs] == [1, 2, 3]
    assert {c.account_id: c.token.get_secret_value() for c in configs} == DEMO_ACCOUNTS
    assert create_emulator_app(DEMO_ACCOUNTS) is not None


def test_banner_says_emulator_and_lists_ids_but_no_tokens():
    text = banner("http://127.0.0.1:8787/client/v4", DEMO_ACCOUNTS)
    assert "EMULATOR" in text and "NOT Cloudflare" in text
    assert "CF_API_BASE_URL=http://127.0.0.1:8787/client/v4" in text
    assert all(account in text for account in DEMO_ACCOUNTS)
    assert not any(token in text for token in DEMO_ACCOUNTS.values())


# --- the Stable Diffusion family, lucid's num_steps, catalogue wording ------------------------

IMG2IMG = "@cf/runwayml/stable-diffusion-v1-5-img2img"
INPAINTING = "@cf/runwayml/stable-diffusion-v1-5-inpainting"


async def test_img2img_has_its_own_per_minute_window():
    runner, emu = await open_emulator(rate_limit_per_minute=1)
    try:
        async with emu.run(SDXL, json={"prompt": "x"}) as response:
            await image_of(response)
        async with emu.run(SDXL, json={"prompt": "x"}) as response:
            assert (await error_of(response))[0] == 429  # the shared text-to-image window
        body = {"prompt": "x", "image": list(picture(32, 32))}
        for _ in range(3):  # 1,500 a minute of its own
            async with emu.run(IMG2IMG, json=body) as response:
                await image_of(response)
    finally:
        await emu.session.close()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"image": [0, 256, 3]}, "image must be an array of integers 0-255"),
        ({"image": "not a list"}, "image must be an array of integers 0-255"),
        ({"image_b64": "%%%"}, "image_b64 must be a base64 string"),
        ({"mask": list(picture(8, 8))}, "mask needs an image"),
        ({"strength": 1.5}, "strength must be between 0 and 1"),
        ({"num_steps": 21}, "num_steps must be between 1 and 20"),
    ],
)
async def test_sd_json_inputs_are_checked_as_the_schema_reads(emu, fields, words):
    async with emu.run(SDXL, json={"prompt": "x", **fields}) as response:
        status, code, message = await error_of(response)
    assert (status, code) == (400, 5006)
    assert words in message


async def test_undecodable_image_bytes_are_3030(emu):
    async with emu.run(IMG2IMG, json={"prompt": "x", "image": [1, 2, 3]}) as response:
        status, code, message = await error_of(response)
    assert (status, code) == (400, 3030) and "unable to decode" in message


async def test_image_b64_is_accepted_in_place_of_the_byte_array(emu):
    body = {"prompt": "x", "image_b64": base64.b64encode(picture(40, 30)).decode()}
    async with emu.run(IMG2IMG, json=body) as response:
        await image_of(response)
    (call,) = await emu.calls()
    assert call["files"]["image_b64"]["width"] == 40
    assert "image_b64" not in call["fields"]  # logged as an image, not as megabytes of text


async def test_models_that_take_no_image_refuse_one(emu):
    async with emu.run(PHOENIX, json={"prompt": "x", "image": list(picture(8, 8))}) as r:
        status, code, message = await error_of(r)
    assert (status, code) == (400, 5006) and "image" in message


async def test_lucid_takes_num_steps_as_well_as_steps_and_bills_them(emu):
    for name in ("steps", "num_steps"):
        body = {"prompt": "x", "width": 1024, "height": 1024, name: 20}
        async with emu.run(LUCID, json=body) as response:
            await image_of(response)
            assert response.headers["cf-ai-neurons"] == "3504.00"  # 636x4 + 12x4x20


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (5018, "The account is not allowed to access this model"),
        (3041, "The account is not allowed to access this model"),
        (5019, "Request trying to use deprecated SDK version"),
        (3023, "Service unavailable for account"),
        (3008, "Request was aborted"),
    ],
)
async def test_error_texts_follow_the_errors_pages_wording(emu, code, text):
    await emu.control("POST", "faults", {"kind": "error", "status": 403, "code": code})
    async with emu.run(KLEIN, data=form({"prompt": "x"})) as response:
        assert (await error_of(response))[1:] == (code, text)


async def test_mislabelled_fault_sends_the_other_format_under_the_documented_label(emu):
    await emu.control("POST", "faults", {"kind": "mislabelled", "model": PHOENIX})
    async with emu.run(PHOENIX, json={"prompt": "x", "width": 256, "height": 256}) as r:
        assert r.content_type == "image/jpeg"
        raw = await r.read()
    assert raw.startswith(b"\x89PNG")
    used = (await emu.control("GET", "usage"))["accounts"][ACCOUNT_A]["neurons_used"]
    assert used == pytest.approx(530 * 0.25 + 10 * 0.25 * 25)  # billed like any success
