"""`flux-proxy mcp` over stdio, driven by the MCP SDK's own client as a real subprocess, on the
run's emulator process (CF_API_BASE_URL) or with `--emulator` embedded.

Covers: the tools and their schemas, a decodable image with its seed, account and original,
progress notifications, references (data: URLs, a local file, the proxy's own image URL) in
order as input_image_0/1, tool errors with the HTTP API's message and no upstream call, and
stdout carrying nothing but protocol messages while logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading

import pytest
from conftest import REDIS_URL
from mcp_helpers import data_url, images_of, stdio_env, stdio_mcp, text_of
from mcp_types import LATEST_PROTOCOL_VERSION
from procs import Emulator, shared_emulator, start_proxy, token

from flux_proxy.api.body import RawRequest
from flux_proxy.api.parse import build_image_request
from flux_proxy.errors import ApiError
from flux_proxy.settings import Settings

SMALL = {"model": "flux-2-klein-4b", "size": "256x256"}


@pytest.fixture
def fresh() -> Emulator:
    return shared_emulator()


async def test_stdio_lists_every_tool_with_schemas_at_the_current_protocol(tmp_path, fresh):
    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        assert client.protocol_version == LATEST_PROTOCOL_VERSION
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {
        "generate_image",
        "edit_image",
        "list_models",
        "account_status",
        "submit_batch",
        "batch_status",
    }
    generate = tools["generate_image"].input_schema
    assert generate["required"] == ["prompt"]
    assert generate["properties"]["n"]["maximum"] == 4
    assert "local file path" in generate["properties"]["reference_images"]["description"]
    assert tools["edit_image"].input_schema["required"] == ["prompt", "images"]
    # An agent must know OpenAI's mask convention, and that any model may be named with one.
    mask = tools["edit_image"].input_schema["properties"]["mask"]["description"]
    assert "fully transparent pixels are repainted" in mask
    assert "stable-diffusion-v1-5-inpainting" in mask
    assert tools["account_status"].annotations.read_only_hint is True
    assert tools["submit_batch"].input_schema["required"] == ["prompts"]
    assert tools["batch_status"].input_schema["required"] == ["batch_id"]
    assert all(tool.description for tool in tools.values())


async def test_stdio_generate_image_returns_a_decodable_image_with_seed_account_and_original(
    tmp_path, fresh
):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        result = await client.call_tool(
            "generate_image",
            {"prompt": "a red fox in snow", "seed": 1234, **SMALL},
            progress_callback=on_progress,
        )
    assert not result.is_error, text_of(result)
    (image,) = images_of(result)
    assert image.size == (256, 256)
    text = text_of(result)
    assert "seed 1234" in text and "account 1" in text and "neurons" in text
    facts = result.structured_content["images"][0]
    assert facts["seed"] == 1234 and facts["account"] == 1 and facts["neurons"] > 0
    assert facts["url"].startswith("/v1/images/files/")  # no PUBLIC_BASE_URL over stdio
    assert progress[0][0] == 0 and progress[-1][0] == 100
    (call,) = fresh.calls()
    assert call["model"] == "@cf/black-forest-labs/flux-2-klein-4b"


async def test_stdio_with_embedded_emulator_generates_and_reports_account_status(tmp_path):
    async with stdio_mcp(tmp_path, stdio_env(None, tmp_path), emulator_flag=True) as client:
        result = await client.call_tool("generate_image", {"prompt": "a kite", **SMALL})
        status = await client.call_tool("account_status", {})
        models = await client.call_tool("list_models", {})
    assert not result.is_error, text_of(result)
    assert len(images_of(result)) == 1
    report = status.structured_content
    assert [a["number"] for a in report["accounts"]] == [1, 2, 3]
    assert report["usable_now"] is True and report["next_reset"].endswith("T00:00:00Z")
    spent = report["accounts"][0]
    assert spent["neurons_used_today"] > 0
    assert spent["neurons_left_today"] == spent["daily_budget"] - spent["neurons_used_today"]
    listing = {m["short_name"]: m for m in models.structured_content["models"]}
    dev = listing["flux-2-dev"]
    assert dev["default"] is True
    assert dev["price_per_1024x1024_image"]["neurons"] == pytest.approx(37.5 * 4 * 25)
    assert listing["flux-2-klein-4b"]["takes"]["steps"] == "fixed at 4"
    stderr = (tmp_path / "stderr.log").read_text()
    assert "emulator_started" in stderr and "demo-token" not in stderr


async def test_edit_image_sends_two_data_references_in_order_as_input_image_0_and_1(
    tmp_path, fresh, png
):
    first, second = png(300, 200), png(120, 160)
    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        result = await client.call_tool(
            "edit_image",
            {
                "prompt": "put the cat from image 2 on the sofa in image 1",
                "images": [data_url(first), data_url(second)],
                **SMALL,
            },
        )
    assert not result.is_error, text_of(result)
    (call,) = fresh.calls()
    files = call["files"]
    assert set(files) == {"input_image_0", "input_image_1"}
    assert (files["input_image_0"]["width"], files["input_image_0"]["height"]) == (300, 200)
    assert (files["input_image_1"]["width"], files["input_image_1"]["height"]) == (120, 160)


async def test_local_file_and_own_image_url_references_reach_the_emulator(tmp_path, fresh, png):
    path = tmp_path / "photo.png"
    path.write_bytes(png(200, 100))
    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        made = await client.call_tool(
            "generate_image", {"prompt": "a boat", "reference_images": [str(path)], **SMALL}
        )
        assert not made.is_error, text_of(made)
        url = made.structured_content["images"][0]["url"]
        again = await client.call_tool(
            "edit_image", {"prompt": "make it night", "images": [url], **SMALL}
        )
    assert not again.is_error, text_of(again)
    first, second = fresh.calls()
    assert (
        first["files"]["input_image_0"]["width"],
        first["files"]["input_image_0"]["height"],
    ) == (
        200,
        100,
    )
    # The second call's reference is the first call's image, read from the image store.
    assert second["files"]["input_image_0"]["width"] == 256


async def _http_api_message(body: dict, *, edit: bool = False) -> str:
    try:
        await build_image_request(RawRequest(body), Settings(), edit=edit)
    except ApiError as error:
        return error.message
    raise AssertionError("the HTTP API accepted it")


BAD_ARGUMENTS = [
    {"prompt": "x", "steps": 500},  # out of flux-2-dev's range
    {"prompt": "x", "size": "9000x10"},
    {"prompt": "x", "model": "dall-e-9"},
    {"model": "flux-2-dev"},  # no prompt
    {"prompt": "x", "seed": "abc"},
    {"prompt": "x", "model": "flux-1-schnell", "size": "512x512"},  # a fixed-size model
]


async def test_bad_arguments_are_tool_errors_with_the_http_api_message_and_no_upstream_call(
    tmp_path, fresh
):
    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        results = [await client.call_tool("generate_image", args) for args in BAD_ARGUMENTS]
    for arguments, result in zip(BAD_ARGUMENTS, results, strict=True):
        assert result.is_error, arguments
        # The same body sent as JSON to /v1/images/generations gets this message.
        assert text_of(result) == await _http_api_message(arguments)
        assert result.structured_content["status"] == 400
    assert fresh.calls() == []


async def test_unknown_arguments_are_refused_not_dropped_before_any_upstream_call(tmp_path, fresh):
    """The SDK drops arguments a tool does not declare: width/height (the HTTP API's fields)
    made a paid 1024x768 image, and an `image` reference was silently left out."""
    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        sized = await client.call_tool(
            "generate_image", {"prompt": "x", "width": 512, "height": 512, **SMALL}
        )
        batch = await client.call_tool("submit_batch", {"prompts": ["x"], "n": 2})
    assert all(t.input_schema.get("additionalProperties") is False for t in tools.values())
    assert sized.is_error and text_of(sized) == (
        "generate_image takes no width, height; its arguments are prompt, model, size, steps, "
        "seed, n, reference_images (size is WIDTHxHEIGHT, e.g. 512x768)"
    )
    assert sized.structured_content["error"]["param"] == "width"
    assert batch.is_error and text_of(batch).startswith("submit_batch takes no n; ")
    assert fresh.calls() == []


async def test_references_that_would_need_the_network_or_are_no_image_are_refused(
    tmp_path, fresh, png
):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    async with stdio_mcp(tmp_path, stdio_env(fresh.base_url, tmp_path)) as client:
        remote = await client.call_tool(
            "generate_image", {"prompt": "x", "reference_images": ["https://example.com/a.png"]}
        )
        text_file = await client.call_tool(
            "generate_image", {"prompt": "x", "reference_images": [str(not_an_image)]}
        )
        relative = await client.call_tool(
            "generate_image", {"prompt": "x", "reference_images": ["photos/cat.png"]}
        )
        too_many = await client.call_tool("generate_image", {"prompt": "x", "n": 5})
        too_few = await client.call_tool("generate_image", {"prompt": "x", "n": 0})
        no_images = await client.call_tool("edit_image", {"prompt": "x"})
        img2img = await client.call_tool(
            "generate_image", {"prompt": "x", "model": "stable-diffusion-v1-5-img2img"}
        )
        masked = await client.call_tool(
            "edit_image",
            {"prompt": "x", "images": [data_url(png())], "mask": data_url(png()), **SMALL},
        )
    assert remote.is_error and "never fetches" in text_of(remote)
    assert remote.structured_content["error"]["param"] == "reference_images"
    assert text_of(text_file) == "reference_images: not a readable PNG, JPEG or WebP image"
    # The host chose the server's working directory: say so, and what to send instead.
    assert relative.is_error and f"working directory, {tmp_path}" in text_of(relative)
    assert "absolute path" in text_of(relative)
    assert too_many.is_error and "between 1 and 4" in text_of(too_many)
    # The tool's own limit, as its schema says, not the HTTP API's 1-10.
    assert text_of(too_few) == (
        "n must be between 1 and 4 (every image comes back in one answer); got 0"
    )
    assert no_images.is_error and no_images.structured_content["error"]["param"] == "images"
    # Named by the tool's argument, not the HTTP API's fields (images, image).
    assert text_of(img2img) == (
        "stable-diffusion-v1-5-img2img changes an image: send one in reference_images"
    )
    assert img2img.structured_content["error"]["param"] == "reference_images"
    masked_body = {"prompt": "x", "images": [data_url(png())], "mask": data_url(png()), **SMALL}
    assert text_of(masked) == await _http_api_message(masked_body, edit=True)
    assert fresh.calls() == []


@pytest.mark.parametrize("embedded", [False, True], ids=["shared-emulator", "--emulator"])
def test_stdout_carries_only_protocol_messages_while_logs_go_to_stderr(tmp_path, fresh, embedded):
    """Raw JSON-RPC lines on the child's stdin; every stdout line must be one JSON-RPC message."""
    env = stdio_env(None if embedded else fresh.base_url, tmp_path, LOG_LEVEL="DEBUG")
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "flux_proxy", "mcp", *(["--emulator"] if embedded else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=tmp_path,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in child.stdout], daemon=True).start()
        messages = [
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw-test", "version": "0"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "generate_image",
                    "arguments": {"prompt": "a lighthouse", **SMALL},
                    "_meta": {"progressToken": "p-1"},
                },
            },
        ]
        for message in messages:
            child.stdin.write(json.dumps(message) + "\n")
        child.stdin.flush()
        received = []
        try:
            while not any(m.get("id") == 2 for m in received):
                line = lines.get(timeout=30)
                received.append(json.loads(line))  # anything but JSON fails here
        finally:
            child.stdin.close()
            child.wait(timeout=15)
    assert all(m["jsonrpc"] == "2.0" for m in received)
    (answer,) = [m for m in received if m.get("id") == 2]
    assert answer["result"]["isError"] is False
    assert any(m.get("method") == "notifications/progress" for m in received)
    logged = [json.loads(line) for line in stderr_path.read_text().splitlines() if line[:1] == "{"]
    assert any(entry["event"] == "upstream_attempt" for entry in logged)
    assert any(entry["event"] == "mcp_tool" for entry in logged)
    assert token(1) not in stderr_path.read_text()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_account_parked_via_stdio_mcp_is_skipped_by_a_proxy_on_the_same_state(
    tmp_path, fresh, backend, request
):
    """Account 1 spent at Cloudflare: MCP's image comes from account 2, and a `serve` process
    on the same DATA_DIR (or Redis prefix) skips account 1 without calling it."""
    state: dict[str, object] = {"STATE_BACKEND": backend, "DATA_DIR": tmp_path / "shared"}
    if backend == "redis":
        state.update(REDIS_URL=REDIS_URL, REDIS_PREFIX=request.getfixturevalue("redis_prefix"))
    fresh.set_usage(1, neurons=10_000)
    async with stdio_mcp(tmp_path / "mcp", stdio_env(fresh.base_url, tmp_path, **state)) as mcp:
        result = await mcp.call_tool("generate_image", {"prompt": "a fox", **SMALL})
        status = await mcp.call_tool("account_status", {})
    assert not result.is_error, text_of(result)
    assert result.structured_content["images"][0]["account"] == 2
    assert "account 2" in text_of(result)
    assert status.structured_content["accounts"][0]["state"] == "parked"
    assert len(fresh.calls(1)) == 1

    proxy = await asyncio.to_thread(start_proxy, tmp_path / "proxy", fresh, **state)
    try:
        answer = await asyncio.to_thread(proxy.generate, **SMALL)
        assert answer.status_code == 200, answer.text
        assert answer.json()["account_used"] == 2
        assert len(fresh.calls(1)) == 1  # the park was read from the shared state
        health = await asyncio.to_thread(proxy.health)
        assert health["accounts"][0]["state"] == "parked"
    finally:
        await asyncio.to_thread(proxy.proc.stop)
