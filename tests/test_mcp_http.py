"""MCP's streamable HTTP transport at `/mcp` on a real uvicorn server (conftest's `make_proxy`),
driven by the MCP SDK's streamable-HTTP client, on the emulator over HTTP.

Covers: the API key (missing or wrong refused before anything runs), an image with progress
and an original the proxy serves, the 2025-11-25 handshake next to the SDK's current
protocol, previews within MCP_IMAGE_MAX_BYTES, failover and budgets shared with the HTTP API,
and references: the proxy's own image URLs read from the store, nothing fetched, no server
file read.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os

import httpx
import openai
import pytest
from mcp_helpers import http_mcp, images_of, text_of
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_PROTOCOL_VERSION
from PIL import Image

SMALL = {"model": "flux-2-klein-4b", "size": "256x256"}


def mcp_url(proxy) -> str:
    return proxy.url + "/mcp"


async def test_mcp_http_refuses_a_missing_or_wrong_key_before_any_upstream_call(
    make_proxy, emulator
):
    proxy = make_proxy()
    async with httpx.AsyncClient() as http:
        bare = await http.post(
            mcp_url(proxy),
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    # A JSON-RPC error, which MCP clients surface, carrying the OpenAI error as its data.
    refusal = bare.json()
    assert refusal["jsonrpc"] == "2.0" and refusal["id"] is None
    assert refusal["error"]["message"] == KEY_MESSAGE
    assert refusal["error"]["data"]["error"]["code"] == "invalid_api_key"
    for key in (None, "not-the-key"):
        with pytest.raises(Exception) as refused:  # the SDK wraps it in task groups
            async with http_mcp(mcp_url(proxy), key) as client:
                await client.call_tool("generate_image", {"prompt": "x", **SMALL})
        # What the host shows: why, not "Server returned an error response".
        assert [str(error) for error in _leaves(refused.value)] == [KEY_MESSAGE]
    assert emulator.calls() == []


KEY_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def test_mcp_http_with_the_right_key_makes_an_image_with_progress_and_a_served_original(
    make_proxy, emulator, caplog
):
    caplog.set_level(logging.INFO, logger="flux_proxy")
    emulator._post("config", {"latency": 1.5})  # long enough for progress to tick
    proxy = make_proxy(mcp_progress_interval=0.2)
    progress: list[float] = []

    async def on_progress(value, total, message):
        progress.append(value)

    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        assert client.protocol_version == LATEST_PROTOCOL_VERSION
        result = await client.call_tool(
            "generate_image", {"prompt": "a lighthouse", **SMALL}, progress_callback=on_progress
        )
    assert not result.is_error, text_of(result)
    (preview,) = images_of(result)
    facts = result.structured_content["images"][0]
    assert facts["url"].startswith(proxy.url + "/v1/images/files/")
    assert facts["url"] in text_of(result)
    async with httpx.AsyncClient() as http:
        original = await http.get(facts["url"])  # the URL is the credential, as for /v1
    assert original.status_code == 200
    assert Image.open(io.BytesIO(original.content)).size == preview.size == (256, 256)
    assert progress[0] == 0 and progress[-1] == 100
    assert len(progress) >= 3 and progress == sorted(set(progress))  # ticks, always rising
    # The call ran as the key's caller (its name, never the key).
    (logged,) = [r.fields for r in caplog.records if getattr(r, "event", None) == "mcp_tool"]
    assert logged["caller"] == "master" and proxy.key not in str(logged)


async def test_mcp_http_also_speaks_the_initialize_handshake_protocol(make_proxy, emulator):
    proxy = make_proxy()
    async with http_mcp(mcp_url(proxy), proxy.key, mode="legacy") as client:
        assert client.protocol_version == LATEST_HANDSHAKE_VERSION
        names = {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("generate_image", {"prompt": "a tree", **SMALL})
    assert names == {
        "generate_image",
        "edit_image",
        "list_models",
        "account_status",
        "submit_batch",
        "batch_status",
    }
    assert not result.is_error, text_of(result)
    assert len(images_of(result)) == 1


async def test_previews_of_several_images_fit_mcp_image_max_bytes_together(make_proxy, emulator):
    budget = 24_000
    proxy = make_proxy(mcp_image_max_bytes=budget, mcp_image_format="webp")
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        result = await client.call_tool(
            "generate_image",
            {"prompt": "fine", "model": "flux-2-klein-4b", "n": 3, "size": "1024x1024", "seed": 7},
        )
    assert not result.is_error, text_of(result)
    parts = [part for part in result.content if part.type == "image"]
    assert len(parts) == 3
    assert sum(len(part.data) for part in parts) <= budget
    for part, image in zip(parts, images_of(result), strict=True):
        assert part.mime_type == "image/webp" and image.format == "WEBP"
    seeds = [entry["seed"] for entry in result.structured_content["images"]]
    assert seeds == [7, 8, 9]
    originals = {entry["mime_type"] for entry in result.structured_content["images"]}
    assert originals != {"image/webp"}  # the originals stay as the model made them


async def test_a_spent_account_fails_over_and_the_http_api_skips_it_afterwards(
    make_proxy, emulator
):
    first = emulator.account_id(1)
    emulator.set_usage(first, 10_000)
    proxy = make_proxy()
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        result = await client.call_tool("generate_image", {"prompt": "a fox", **SMALL})
        status = await client.call_tool("account_status", {})
    assert not result.is_error, text_of(result)
    assert result.structured_content["images"][0]["account"] == 2
    assert status.structured_content["accounts"][0]["state"] == "parked"
    assert status.structured_content["accounts"][0]["neurons_left_today"] == 0
    assert len(emulator.calls(first)) == 1

    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    answer = await sdk.images.generate(prompt="a fox", **SMALL)
    await sdk.close()
    assert answer.model_extra["account_used"] == 2
    assert len(emulator.calls(first)) == 1  # parked by the MCP call, skipped by /v1


async def test_no_account_left_is_a_tool_error_that_says_when(make_proxy, emulator):
    for number in (1, 2, 3):
        emulator.set_usage(emulator.account_id(number), 10_000)
    proxy = make_proxy()
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        await client.call_tool("generate_image", {"prompt": "x", **SMALL})  # learns the parks
        result = await client.call_tool("generate_image", {"prompt": "x", **SMALL})
    assert result.is_error
    assert result.structured_content["status"] == 429
    assert result.structured_content["error"]["code"] == "accounts_exhausted"
    assert "usable again" in text_of(result) and "T00:00:00Z)" in text_of(result)  # midnight UTC


async def test_budgets_too_small_for_this_image_say_a_smaller_one_can_be_made_now(
    make_proxy, emulator
):
    """Every account has neurons left, only not the 3,750 of a 1024x1024 flux-2-dev image:
    the 429 must not read as "nothing until midnight" to an agent, who would give up."""
    proxy = make_proxy(daily_neurons=5000)
    dev = {"model": "flux-2-dev", "size": "1024x1024"}
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        for _ in range(3):  # 3,750 of each account's 5,000
            made = await client.call_tool("generate_image", {"prompt": "x", **dev})
            assert not made.is_error, text_of(made)
        result = await client.call_tool("generate_image", {"prompt": "x", **dev})
        smaller = await client.call_tool("generate_image", {"prompt": "x", **SMALL})
    assert result.is_error
    assert result.structured_content["error"]["code"] == "accounts_exhausted"
    text = text_of(result)
    assert "T00:00:00Z)" in text  # the HTTP API's message first
    assert "3,750 neurons" in text and "1,250" in text and "can be made now" in text
    assert not smaller.is_error, text_of(smaller)


async def test_own_image_urls_are_read_from_the_store_and_server_files_never(make_proxy, emulator):
    proxy = make_proxy()
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    made = await sdk.images.generate(prompt="a cat", response_format="url", **SMALL)
    await sdk.close()
    url = made.data[0].url
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        edited = await client.call_tool(
            "edit_image", {"prompt": "give it a hat", "images": [url], **SMALL}
        )
        server_file = await client.call_tool(
            "edit_image", {"prompt": "x", "images": ["/etc/hostname"], **SMALL}
        )
        expired = await client.call_tool(
            "edit_image",
            {"prompt": "x", "images": [proxy.url + "/v1/images/files/" + "A" * 32 + ".png"]},
        )
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert not edited.is_error, text_of(edited)
    calls = emulator.calls()
    assert len(calls) == 2 and "input_image_0" in calls[1]["files"]
    assert server_file.is_error and "never fetches" in text_of(server_file)
    assert expired.is_error and "no such image" in text_of(expired)
    images_schema = tools["edit_image"].input_schema["properties"]["images"]
    assert "local file" not in images_schema["description"]
    assert len(emulator.calls()) == 2


async def test_mcp_http_data_url_references_bigger_than_the_sdk_default_body_are_accepted(
    make_proxy, emulator
):
    # 4 MiB is the SDK's own default body limit; the proxy's MAX_BODY_BYTES applies instead.
    noise = Image.frombytes("RGB", (1400, 1400), os.urandom(1400 * 1400 * 3))
    out = io.BytesIO()
    noise.save(out, format="PNG", compress_level=0)
    big = out.getvalue()
    assert len(big) > 4 * 1024 * 1024
    proxy = make_proxy()
    reference = "data:image/png;base64," + base64.b64encode(big).decode("ascii")
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "x", "reference_images": [reference], **SMALL}
        )
    assert not result.is_error, text_of(result)
    (call,) = emulator.calls()
    sent = call["files"]["input_image_0"]
    assert max(sent["width"], sent["height"]) < 512  # scaled below FLUX.2's limit, as for /v1


async def test_a_seeded_repeat_comes_from_the_work_layers_cache_without_an_upstream_call(
    make_proxy, emulator
):
    proxy = make_proxy()
    arguments = {"prompt": "the same fox", "seed": 42, **SMALL}
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        first = await client.call_tool("generate_image", arguments)
        second = await client.call_tool("generate_image", arguments)
    assert not first.is_error and not second.is_error
    assert first.structured_content["images"][0]["cached"] is False
    repeat = second.structured_content["images"][0]
    assert repeat["cached"] is True and repeat["neurons"] == 0
    assert "no neurons spent" in text_of(second)
    assert images_of(first)[0].tobytes() == images_of(second)[0].tobytes()
    assert len(emulator.calls()) == 1


async def test_one_failed_image_of_two_is_reported_beside_the_one_made(make_proxy, emulator):
    emulator.fault(status=400, code=5006, message="bad input", count=1)  # input: no failover
    proxy = make_proxy()
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        result = await client.call_tool("generate_image", {"prompt": "two", "n": 2, **SMALL})
    assert not result.is_error, text_of(result)
    assert len(images_of(result)) == 1
    (failure,) = result.structured_content["errors"]
    assert failure["error"]["code"] == "upstream_rejected_input"
    assert f"Image {failure['index'] + 1} of 2 failed" in text_of(result)


async def test_without_keys_only_loopback_host_names_reach_mcp(make_proxy, emulator):
    proxy = make_proxy(api_master_key=None, no_auth=True)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    async with httpx.AsyncClient() as http:
        rebound = await http.post(
            mcp_url(proxy), json=body, headers={**accept, "host": "attacker.example"}
        )
    assert rebound.status_code == 421  # a DNS-rebinding page cannot drive a keyless proxy
    async with http_mcp(mcp_url(proxy), None) as client:
        tools = await client.list_tools()
    assert len(tools.tools) == 6


async def test_submit_batch_queues_prompts_that_batch_status_reports_with_their_urls(
    make_proxy, emulator, tmp_path
):
    proxy = make_proxy(data_dir=tmp_path / "data", batch_poll_seconds=0.1)
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        bad = await client.call_tool("submit_batch", {"prompts": ["a fox"], "size": "banana"})
        assert bad.is_error and "size" in text_of(bad)
        assert emulator.calls() == []

        submitted = await client.call_tool(
            "submit_batch",
            {"prompts": ["a fox", "a heron", "an owl"], **SMALL, "completion_window": "72h"},
        )
        assert not submitted.is_error, text_of(submitted)
        batch = submitted.structured_content
        assert batch["id"].startswith("batch_") and batch["request_counts"]["total"] == 3
        assert batch["estimated_neurons"] > 0 and batch["estimated_completion_at"]

        status = batch
        for _ in range(300):
            result = await client.call_tool("batch_status", {"batch_id": batch["id"]})
            assert not result.is_error, text_of(result)
            status = result.structured_content
            if status["status"] == "completed":
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "completed", status
        assert [line["custom_id"] for line in status["images"]] == ["0001", "0002", "0003"]
        async with httpx.AsyncClient() as http:
            for line in status["images"]:
                (url,) = line["urls"]
                image = Image.open(io.BytesIO((await http.get(url)).content))
                assert image.size == (256, 256)
        # batch_status says its URLs, like the image tools', can be passed back.
        edited = await client.call_tool(
            "edit_image", {"prompt": "make it blue", "images": [url], **SMALL}
        )
        assert not edited.is_error, text_of(edited)
        missing = await client.call_tool("batch_status", {"batch_id": "batch_nope"})
        assert missing.is_error
    assert len(emulator.calls()) == 4
    assert emulator.calls()[-1]["files"]["input_image_0"]["width"] == 256
    # The batch is the HTTP API's own: the same key sees it there.
    with openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0) as sdk:
        assert sdk.batches.retrieve(batch["id"]).status == "completed"


async def test_account_status_for_a_user_key_is_the_summary_health_gives_it(
    make_proxy, emulator, tmp_path
):
    # Before: a user key got every account's masked id, reason and budget through MCP,
    # which /health keeps for admin keys.
    keys = tmp_path / "keys.toml"
    keys.write_text('[[keys]]\nname = "alice"\nkey = "alice-secret-key-1"\nrole = "user"\n')
    proxy = make_proxy(api_keys_file=keys)
    async with http_mcp(mcp_url(proxy), "alice-secret-key-1") as client:
        user = (await client.call_tool("account_status", {})).structured_content
    async with http_mcp(mcp_url(proxy), proxy.key) as client:
        admin = (await client.call_tool("account_status", {})).structured_content
    assert "accounts" not in user
    assert user["counts"] == {"available": 3, "cooling": 0, "parked": 0, "disabled": 0}
    assert user["usable_now"] is True and user["neurons_remaining_today"] == 30_000
    assert user["next_reset"] == admin["next_reset"]
    for number in (1, 2, 3):
        assert emulator.account_id(number)[-4:] not in str(user)
    assert [entry["number"] for entry in admin["accounts"]] == [1, 2, 3]


async def test_a_key_limited_to_some_models_is_told_which_when_it_leaves_out_model(
    make_proxy, emulator, tmp_path
):
    """The tools' schema says model may be left out (default flux-2-dev); a key without
    flux-2-dev that does so must learn what it may send, and list_models must not name a
    default the key cannot use."""
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "bob"\nkey = "bob-secret-key-1"\nrole = "user"\n'
        'models = ["flux-2-klein-4b", "flux-1-schnell"]\n'
    )
    proxy = make_proxy(api_keys_file=keys)
    async with http_mcp(mcp_url(proxy), "bob-secret-key-1") as client:
        refused = await client.call_tool("generate_image", {"prompt": "x"})
        listing = (await client.call_tool("list_models", {})).structured_content
    assert refused.is_error and refused.structured_content["error"]["code"] == "model_not_allowed"
    assert "it may use flux-2-klein-4b, flux-1-schnell" in text_of(refused)
    assert [m["short_name"] for m in listing["models"]] == ["flux-2-klein-4b", "flux-1-schnell"]
    assert listing["default_model"] is None
    assert not any(m["default"] for m in listing["models"])
    assert emulator.calls() == []
