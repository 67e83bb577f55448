"""How the work layer's answers present themselves (issue 9), JSON and streamed alike.

- A `stream: true` answer carries the same `x-flux-cache` / `x-flux-replayed` headers as a JSON
  one, and a request the work layer refuses before any image is made (an Idempotency-Key reused
  with another request) is a plain HTTP error the openai SDK raises as such, not an error event
  inside a 200 stream. The cache lookup and the repeat check happen before the stream's headers
  are sent; only a repeat that has to wait for identical work still in flight starts without.
- A cache hit cost nothing: its `usage.neurons` is 0 (as the MCP tools and `/v1/usage` say).
- A result kept after a hang-up says which of its n images were never made (their calls were
  not sent yet when the caller left), so a retry is not silently short of images.
"""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import openai
import pytest
from reliability import connect, request_head, wait_for


@pytest.fixture
def client(proxy):
    with openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0) as client:
        yield client


def streamed(client: openai.OpenAI, headers: dict | None = None, **body):
    """(response headers, events) of one streamed generation through the SDK."""
    body = {"prompt": "a lighthouse at dusk", "size": "256x256", **body}
    raw = client.images.with_raw_response.generate(stream=True, extra_headers=headers or {}, **body)
    return raw.headers, list(raw.parse())


def test_a_streamed_seeded_request_says_miss_then_hit_and_the_hit_makes_no_call(client, emulator):
    headers, first = streamed(client, extra_body={"seed": 42})
    assert headers["x-flux-cache"] == "miss"
    assert "x-flux-replayed" not in headers
    assert len(first) == 1 and len(emulator.calls()) == 1

    headers, again = streamed(client, output_format="jpeg", extra_body={"seed": 42})
    assert headers["x-flux-cache"] == "hit"
    assert len(emulator.calls()) == 1  # served from the cache
    assert [e.type for e in again] == ["image_generation.completed"]
    assert again[0].output_format == "jpeg"
    assert base64.b64decode(again[0].b64_json)[:3] == b"\xff\xd8\xff"  # rendered for this one


def test_a_streamed_unseeded_request_says_bypass(client, emulator):
    headers, events = streamed(client, n=2)
    assert headers["x-flux-cache"] == "bypass"
    assert len(events) == 2 and len(emulator.calls()) == 2


def test_no_store_and_no_cache_streams_say_so_in_their_headers(client, emulator):
    seeded = {"extra_body": {"seed": 7}}
    assert streamed(client, {"Cache-Control": "no-store"}, **seeded)[0]["x-flux-cache"] == (
        "bypass"
    )
    assert streamed(client, {"Cache-Control": "no-cache"}, **seeded)[0]["x-flux-cache"] == "miss"
    assert streamed(client, **seeded)[0]["x-flux-cache"] == "hit"
    assert len(emulator.calls()) == 2


def test_a_streamed_repeat_of_an_idempotency_key_is_marked_replayed(client, emulator):
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = client.images.generate(
        prompt="a lighthouse at dusk",
        size="256x256",
        response_format="b64_json",
        extra_headers=key,
    )
    headers, events = streamed(client, key)
    assert headers["x-flux-replayed"] == "true"
    assert len(emulator.calls()) == 1
    assert [e.b64_json for e in events] == [first.data[0].b64_json]


def test_a_streamed_replay_keeps_the_created_time_of_the_work_it_replays(proxy, client):
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    first = client.images.generate(prompt="a lighthouse at dusk", size="256x256", extra_headers=key)
    proxy.clock.advance(120)  # the repeat comes two minutes later
    headers, events = streamed(client, key)
    assert headers["x-flux-replayed"] == "true"
    assert [e.created_at for e in events] == [first.created]


def test_a_reused_idempotency_key_on_a_stream_is_a_422_the_sdk_raises_before_streaming(
    client, emulator
):
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    client.images.generate(prompt="a lighthouse at dusk", size="256x256", extra_headers=key)
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        streamed(client, key, prompt="a different picture")
    assert caught.value.status_code == 422
    assert caught.value.body["code"] == "idempotency_key_reused"
    assert len(emulator.calls()) == 1


def test_a_cache_hit_reports_zero_neurons_in_its_usage_json_and_streamed(client, emulator):
    body = {"prompt": "a lighthouse at dusk", "size": "256x256", "extra_body": {"seed": 9}}
    made = client.images.generate(response_format="b64_json", **body)
    [call] = emulator.calls()
    assert call["neurons"] > 0
    assert made.usage.model_extra["neurons"] == pytest.approx(call["neurons"], abs=0.01)

    hit = client.images.with_raw_response.generate(response_format="b64_json", **body)
    assert hit.headers["x-flux-cache"] == "hit"
    assert hit.parse().usage.model_extra["neurons"] == 0
    _, events = streamed(client, **body)
    assert [e.usage.model_extra["neurons"] for e in events] == [0]
    assert len(emulator.calls()) == 1


def test_a_retry_after_a_hang_up_is_told_which_images_were_never_made(make_proxy, emulator):
    # One slot: image 0's call is sent (and slow), image 1 waits for the slot when the caller
    # leaves, so it is dropped unpaid while image 0 is finished and kept.
    proxy = make_proxy(
        accounts=emulator.account_configs()[:1], account_concurrency=1, slot_wait_seconds=30
    )
    emulator.fault(kind="timeout", latency=2.0, count=1)
    body = {"prompt": "two, one never sent", "size": "256x256", "n": 2}
    payload = json.dumps(body).encode()
    sock = connect(proxy.url)
    try:
        head = {**proxy.auth, "Content-Type": "application/json"}
        head["Content-Length"] = str(len(payload))
        sock.sendall(request_head("POST", "/v1/images/generations", head) + payload)
        assert wait_for(lambda: len(emulator.calls()) == 1, 10), emulator.calls()
    finally:
        sock.close()

    retry = httpx.post(  # what the openai SDK sends on its own retry
        proxy.base_url + "/images/generations",
        json=body,
        headers={**proxy.auth, "x-stainless-retry-count": "1"},
        timeout=30,
    )
    assert retry.status_code == 200, retry.text
    assert retry.headers["x-flux-replayed"] == "true"
    answer = retry.json()
    assert len(answer["data"]) == 1 and len(emulator.calls()) == 1
    assert [(e["index"], e["error"]["code"]) for e in answer["errors"]] == [(1, "image_not_made")]
