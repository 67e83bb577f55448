"""Never pay twice, never lose a paid image (issue 9), with real processes: `flux-proxy serve`
(SQLite state, or two replicas on one Redis), the emulator process over HTTP, the real openai
SDK and raw sockets for callers who hang up.

- a call that was sent runs to its end after the caller left; its result is kept and a repeat
  (the SDK's own retry, or the same Idempotency-Key) collects it without a second call;
- an Idempotency-Key reused with another request is a 422 the SDK does not retry;
- seeded requests are served from the cache: zero calls on a repeat, one call for identical
  requests at once, `Cache-Control: no-cache` / `no-store` as documented.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import REDIS_URL
from procs import API_KEY, Emulator, Proxy, launch_proxy, ready, shared_emulator, start_proxy
from prometheus_client.parser import text_string_to_metric_families
from reliability import SMALL, connect, request_head, wait_for

CALL_SECONDS = 3.0


@pytest.fixture
def fresh() -> Emulator:
    emulator = shared_emulator()
    yield emulator
    emulator.reset()  # latency back to normal for whoever comes next


@pytest.fixture
def proxy(tmp_path, fresh) -> Proxy:
    proxy = start_proxy(tmp_path, fresh, STATE_BACKEND="sqlite", DATA_DIR=tmp_path / "data")
    yield proxy
    proxy.proc.stop()


def sdk(proxy: Proxy, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=API_KEY, **options)


def post(proxy: Proxy, body: dict, headers: dict | None = None, timeout: float = 30):
    return httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "a lighthouse at dusk", **SMALL, **body},
        headers={**proxy.auth, **(headers or {})},
        timeout=timeout,
    )


def send_and_hang_up(proxy: Proxy, body: dict, headers: dict, emulator: Emulator) -> None:
    """Send a whole request over a raw socket, wait until Workers AI has it, then close."""
    payload = json.dumps({"prompt": "a lighthouse at dusk", **SMALL, **body}).encode()
    sock = connect(proxy.url)
    try:
        head = {
            **proxy.auth,
            **headers,
            "Content-Type": "application/json",
            "Content-Length": str(len(payload)),
        }
        sock.sendall(request_head("POST", "/v1/images/generations", head) + payload)
        assert wait_for(lambda: len(emulator.calls()) == 1, 10), emulator.calls()
    finally:
        sock.close()


def metric(proxy: Proxy, name: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(proxy.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def settled(proxy: Proxy) -> float:
    """Once nothing is in flight, the neurons the ledger shows for today."""
    assert wait_for(
        lambda: all(a["in_flight"] == 0 for a in proxy.health()["accounts"]), 20, 0.1
    ), proxy.health()["accounts"]
    return sum(a["neurons_used_today"] for a in proxy.health()["accounts"])


# --- section 1 and 2: hang-ups and repeats ------------------------------------------------


def test_sdk_timeout_shorter_than_the_call_gets_its_image_from_exactly_one_call(proxy, fresh):
    fresh.config(latency=CALL_SECONDS)
    client = sdk(proxy, timeout=CALL_SECONDS / 2)  # the SDK's default max_retries=2

    raw = client.images.with_raw_response.generate(
        prompt="a lighthouse at dusk", response_format="b64_json", **SMALL
    )

    image = raw.parse()
    assert image.data[0].b64_json
    assert raw.headers["x-flux-replayed"] == "true"
    [call] = fresh.calls()
    assert call["status"] == 200
    assert metric(proxy, "flux_proxy_results_kept_total") == 1
    assert metric(proxy, "flux_proxy_results_collected_total") == 1
    assert metric(proxy, "flux_proxy_images_finished_after_hangup_total") == 1


def test_hang_up_mid_call_then_the_same_idempotency_key_collects_the_image(proxy, fresh):
    fresh.config(latency=CALL_SECONDS)
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    send_and_hang_up(proxy, {"response_format": "b64_json"}, key, fresh)

    # Nobody has collected it yet, and the ledger already shows what the call cost.
    spent = settled(proxy)
    [call] = fresh.calls()
    assert call["status"] == 200
    assert spent == pytest.approx(call["neurons"], abs=0.01)

    again = post(proxy, {"response_format": "b64_json"}, key)
    assert again.status_code == 200, again.text
    assert again.headers["x-flux-replayed"] == "true"
    body = again.json()
    assert body["data"][0]["b64_json"]

    # Another form of the same answer: same id, created and image, as an event stream.
    streamed = post(proxy, {"stream": True}, key)
    assert streamed.status_code == 200
    events = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
    ]
    assert events[0]["b64_json"] == body["data"][0]["b64_json"]
    third = post(proxy, {"response_format": "b64_json"}, key)
    assert (third.json()["id"], third.json()["created"]) == (body["id"], body["created"])
    assert len(fresh.calls()) == 1


def test_a_replay_answers_the_cache_status_of_the_work_it_replays(proxy, fresh):
    seeded = {"response_format": "b64_json", "seed": 4242}
    missed = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = post(proxy, seeded, missed)
    assert first.headers["x-flux-cache"] == "miss"
    again = post(proxy, seeded, missed)
    assert again.headers["x-flux-replayed"] == "true"
    assert again.headers["x-flux-cache"] == "miss"

    hit = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    assert post(proxy, seeded, hit).headers["x-flux-cache"] == "hit"
    replayed = post(proxy, {**seeded, "stream": True}, hit)
    assert replayed.headers["x-flux-replayed"] == "true"
    assert replayed.headers["x-flux-cache"] == "hit"
    assert len(fresh.calls()) == 1

    # A result kept after a hang-up and collected by the SDK's own retry says so too.
    fresh.reset()
    fresh.config(latency=CALL_SECONDS)
    other = {"response_format": "b64_json", "seed": 777}
    send_and_hang_up(proxy, other, {}, fresh)
    retry = post(proxy, other, {"x-stainless-retry-count": "1"})
    assert retry.headers["x-flux-replayed"] == "true"
    assert retry.headers["x-flux-cache"] == "miss"
    assert len(fresh.calls()) == 1


def test_idempotency_key_reused_with_another_request_is_a_422_the_sdk_does_not_retry(proxy, fresh):
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    client = sdk(proxy, timeout=30)
    client.images.generate(prompt="a red fox", extra_headers=key, **SMALL)

    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.images.generate(prompt="a blue fox", extra_headers=key, **SMALL)

    error = caught.value.body
    assert error["code"] == "idempotency_key_reused"
    assert error["type"] == "invalid_request_error"
    assert caught.value.response.headers["x-request-id"]
    assert len(fresh.calls()) == 1


def test_same_request_without_key_or_retry_header_is_made_anew(proxy, fresh):
    first = post(proxy, {"response_format": "b64_json"})
    second = post(proxy, {"response_format": "b64_json"})

    assert first.status_code == second.status_code == 200
    assert "x-flux-replayed" not in second.headers
    assert second.headers["x-flux-cache"] == "bypass"  # no seed: never cached
    assert first.json()["seed"] != second.json()["seed"]
    assert len(fresh.calls()) == 2


# --- section 3: the seeded cache --------------------------------------------------------------


def test_seeded_repeat_is_served_from_the_cache_with_zero_calls_in_the_form_asked(proxy, fresh):
    client = sdk(proxy, timeout=30, max_retries=0)
    first = client.images.with_raw_response.generate(
        prompt="a red fox", response_format="b64_json", extra_body={"seed": 42}, **SMALL
    )
    assert first.headers["x-flux-cache"] == "miss"

    again = client.images.with_raw_response.generate(
        prompt="a red fox",
        response_format="b64_json",
        extra_body={"seed": 42, "output_format": "jpeg"},
        **SMALL,
    )

    assert again.headers["x-flux-cache"] == "hit"
    assert again.parse().output_format == "jpeg"
    assert again.parse().data[0].b64_json != first.parse().data[0].b64_json  # converted
    assert len(fresh.calls()) == 1
    assert metric(proxy, "flux_proxy_cache_lookups_total") == 2
    assert metric(proxy, "flux_proxy_cache_neurons_saved_total") == pytest.approx(
        fresh.calls()[0]["neurons"], abs=0.01
    )
    assert proxy.health()["cache"]["entries"] == 1


def test_five_identical_seeded_requests_at_once_make_one_call(proxy, fresh):
    fresh.config(latency=1.0)
    body = {"seed": 7, "response_format": "b64_json"}
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: post(proxy, body), range(5)))

    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.json()["data"][0]["b64_json"] for a in answers}) == 1
    assert sorted(a.headers["x-flux-cache"] for a in answers) == ["hit"] * 4 + ["miss"]
    assert len(fresh.calls()) == 1


def test_no_cache_remakes_and_refreshes_no_store_bypasses_both_ways(proxy, fresh):
    seeded = {"seed": 5, "response_format": "b64_json"}
    assert post(proxy, seeded).headers["x-flux-cache"] == "miss"
    remade = post(proxy, seeded, {"Cache-Control": "no-cache"})
    assert remade.headers["x-flux-cache"] == "miss"
    assert len(fresh.calls()) == 2
    assert post(proxy, seeded).headers["x-flux-cache"] == "hit"  # the refreshed entry
    assert len(fresh.calls()) == 2

    other = {"seed": 6, "response_format": "b64_json"}
    assert post(proxy, other, {"Cache-Control": "no-store"}).headers["x-flux-cache"] == "bypass"
    assert post(proxy, other).headers["x-flux-cache"] == "miss"  # no-store wrote nothing
    assert post(proxy, other, {"Cache-Control": "no-store"}).headers["x-flux-cache"] == "bypass"
    assert len(fresh.calls()) == 5  # and read nothing either
    assert proxy.health()["cache"]["entries"] == 2


# --- across replicas ---------------------------------------------------------------------------


def test_repeat_on_replica_b_collects_the_work_replica_a_is_doing(tmp_path, fresh, redis_prefix):
    a, b = (
        launch_proxy(
            tmp_path / name,
            fresh,
            STATE_BACKEND="redis",
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=redis_prefix,
        )
        for name in ("a", "b")
    )
    try:
        ready(a, b)
        fresh.config(latency=CALL_SECONDS)
        key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
        send_and_hang_up(a, {"response_format": "b64_json"}, key, fresh)

        # B sees A's marker, waits for A's work and collects it: no call of its own.
        on_b = post(b, {"response_format": "b64_json"}, key)

        assert on_b.status_code == 200, on_b.text
        assert on_b.headers["x-flux-replayed"] == "true"
        assert on_b.json()["data"][0]["b64_json"]
        assert len(fresh.calls()) == 1
    finally:
        a.proc.stop()
        b.proc.stop()


def test_kept_result_survives_a_restart_on_sqlite(tmp_path, fresh):
    data = tmp_path / "data"
    first = start_proxy(tmp_path / "first", fresh, STATE_BACKEND="sqlite", DATA_DIR=data)
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    try:
        fresh.config(latency=1.0)
        send_and_hang_up(first, {"response_format": "b64_json", "seed": 11}, key, fresh)
        settled(first)
        assert wait_for(lambda: metric(first, "flux_proxy_results_kept_total") == 1, 10)
    finally:
        first.proc.stop()

    second = start_proxy(tmp_path / "second", fresh, STATE_BACKEND="sqlite", DATA_DIR=data)
    try:
        again = post(second, {"response_format": "b64_json", "seed": 11}, key)
        assert again.status_code == 200, again.text
        assert again.headers["x-flux-replayed"] == "true"
        cached = post(second, {"response_format": "url", "seed": 11})  # no key: the cache
        assert cached.headers["x-flux-cache"] == "hit"
        assert len(fresh.calls()) == 1
    finally:
        second.proc.stop()
