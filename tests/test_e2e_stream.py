"""`stream: true` end to end: the openai SDK's own stream parser (sync and async) against a real
proxy and the emulator; raw SSE framing (keep-alives, [DONE]); errors as SSE error events; a
caller hanging up mid-stream.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import httpx
import openai
import pytest
from PIL import Image


def decoded(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def picture(width: int, height: int) -> io.BytesIO:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, format="PNG")
    out.seek(0)
    return out


def sse_blocks(text: str) -> list[str]:
    return [block for block in text.split("\n\n") if block.strip()]


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) for every block with data; comments are skipped."""
    events = []
    for block in sse_blocks(text):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def test_sync_sdk_stream_yields_one_completed_event_with_openai_fields(openai_client, emulator):
    stream = openai_client.images.generate(
        prompt="a lighthouse", size="512x384", stream=True, extra_body={"seed": 5}
    )
    events = list(stream)
    assert [event.type for event in events] == ["image_generation.completed"]
    (event,) = events
    assert decoded(event.b64_json).size == (512, 384)
    assert event.size == "512x384"
    assert event.output_format == "png"
    assert event.quality == "auto" and event.background == "opaque"
    assert abs(event.created_at - time.time()) < 60  # seconds, not milliseconds
    assert event.usage.total_tokens == 0
    assert event.usage.model_extra["neurons"] > 0
    assert event.model_extra["seed"] == 5 and event.model_extra["index"] == 0
    (call,) = emulator.calls()
    assert call["fields"]["seed"] == "5"


async def test_async_sdk_stream_with_n_3_yields_three_events_with_distinct_seeds(
    async_openai_client, emulator
):
    stream = await async_openai_client.images.generate(
        prompt="a fox", n=3, size="256x256", stream=True, extra_body={"seed": 40}
    )
    events = [event async for event in stream]
    assert len(events) == 3
    assert {event.type for event in events} == {"image_generation.completed"}
    assert sorted(event.model_extra["index"] for event in events) == [0, 1, 2]
    assert sorted(event.model_extra["seed"] for event in events) == [40, 41, 42]
    assert len({event.b64_json for event in events}) == 3
    assert len(emulator.calls()) == 3


def test_edit_stream_yields_image_edit_completed(openai_client, emulator):
    stream = openai_client.images.edit(
        image=("cat.png", picture(100, 80), "image/png"),
        prompt="make it blue",
        size="256x256",
        stream=True,
        partial_images=2,  # accepted; no served model makes partial images
    )
    events = list(stream)
    assert [event.type for event in events] == ["image_edit.completed"]
    assert decoded(events[0].b64_json).size == (256, 256)
    (call,) = emulator.calls()
    assert set(call["files"]) == {"input_image_0"}


def test_raw_stream_is_event_stream_with_keepalives_events_and_done(make_proxy, emulator):
    proxy = make_proxy(stream_keepalive_seconds=0.05)
    emulator.fault(kind="timeout", latency=0.4, count=1)  # a slow image: keep-alives meanwhile
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        json={"prompt": "a cat", "size": "256x256", "stream": True},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    blocks = sse_blocks(response.text)
    keepalives = [b for b in blocks if b == ": keep-alive"]
    assert len(keepalives) >= 3  # one at once, then every 50 ms for 400 ms
    assert blocks.index(keepalives[-1]) < len(blocks) - 2  # they come before the image
    events = sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    name, data = events[0]
    assert name == "image_generation.completed"
    assert json.loads(data)["type"] == "image_generation.completed"


def test_stream_with_response_format_url_adds_a_working_url(openai_client, proxy):
    (event,) = list(
        openai_client.images.generate(
            prompt="a cat", size="256x256", stream=True, response_format="url"
        )
    )
    url = event.model_extra["url"]
    assert url.startswith(proxy.url + "/v1/images/files/")
    assert httpx.get(url).content == base64.b64decode(event.b64_json)


def test_stream_with_output_format_sends_the_converted_image(openai_client):
    (event,) = list(
        openai_client.images.generate(
            prompt="a cat", size="256x256", stream=True, output_format="webp"
        )
    )
    assert event.output_format == "webp"
    assert decoded(event.b64_json).format == "WEBP"


def test_upstream_refusal_after_the_stream_began_is_an_error_event_the_sdk_raises(
    openai_client, emulator
):
    emulator.fault(status=400, code=5006, message="Invalid input: prompt flagged")
    stream = openai_client.images.generate(prompt="a cat", size="256x256", stream=True)
    assert stream.response.status_code == 200
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    assert not isinstance(caught.value, openai.APIStatusError)  # raised from the event
    assert "prompt flagged" in caught.value.message
    assert caught.value.code == "upstream_rejected_input"
    assert caught.value.type == "invalid_request_error"


def test_every_account_parked_is_an_error_event_with_its_status(proxy, emulator):
    emulator.fault(status=429, code=3036)
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        json={"prompt": "a cat", "size": "256x256", "stream": True},
        timeout=30,
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["error", None]
    error = json.loads(events[0][1])
    assert error["type"] == "error" and error["status"] == 429
    assert error["error"]["code"] == "accounts_exhausted"
    for _, account_id, token in emulator.accounts:
        assert account_id not in response.text and token not in response.text


def test_partial_failure_streams_the_images_made_then_an_error_listing_the_failures(
    proxy, emulator
):
    emulator.fault(status=400, code=5006, message="Invalid input: flagged", count=1)
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        json={"prompt": "a cat", "size": "256x256", "stream": True, "n": 3, "seed": 1},
        timeout=30,
    )
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names == ["image_generation.completed"] * 2 + ["error", None]
    error = json.loads(events[2][1])
    (failure,) = error["errors"]
    made = {json.loads(data)["index"] for _, data in events[:2]}
    assert made | {failure["index"]} == {0, 1, 2}
    assert error["error"]["message"].startswith(f"image {failure['index']} of 3 failed")


def test_sdk_gets_the_images_made_before_the_error_is_raised(openai_client, emulator):
    emulator.fault(status=400, code=5006, message="Invalid input: flagged", count=1)
    stream = openai_client.images.generate(prompt="a cat", size="256x256", n=2, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        for event in stream:
            received.append(event)
    assert len(received) == 1 and received[0].type == "image_generation.completed"


def test_invalid_streaming_request_is_a_plain_400_the_sdk_raises_before_streaming(
    openai_client, emulator
):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(prompt="a cat", size="7x7", stream=True)
    assert caught.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.images.generate(prompt="a cat", stream=True, background="transparent")
    assert caught.value.body["param"] == "background"
    assert emulator.calls() == []


async def test_caller_hanging_up_mid_stream_lets_the_sent_call_finish_and_settles_it(
    make_proxy, emulator
):
    proxy = make_proxy(stream_keepalive_seconds=0.05)
    emulator.fault(kind="timeout", latency=3.0, count=1)
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST",
            proxy.base_url + "/images/generations",
            headers=proxy.auth,
            json={"prompt": "a cat", "size": "256x256", "stream": True},
        ) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_bytes():
                assert chunk.startswith(b": keep-alive")
                if emulator.calls():
                    break  # hang up once the call was sent, while the image is being made
        # The sent call is Workers AI working: it runs to its end, then its slot comes back
        # and its neurons are settled on the ledger (never released).
        deadline = time.monotonic() + 15
        while True:
            health = (await client.get(proxy.url + "/health", headers=proxy.auth)).json()
            if all(account["in_flight"] == 0 for account in health["accounts"]):
                break
            assert time.monotonic() < deadline, health["accounts"]
            await asyncio.sleep(0.05)
        [call] = emulator.calls()
        assert call["status"] == 200
        spent = sum(account["neurons_used_today"] for account in health["accounts"])
        assert spent == pytest.approx(call["neurons"], abs=0.01)
        # And the proxy goes on serving.
        after = await client.post(
            proxy.base_url + "/images/generations",
            headers=proxy.auth,
            json={"prompt": "a dog", "size": "256x256", "response_format": "b64_json"},
        )
        assert after.status_code == 200
