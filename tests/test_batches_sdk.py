"""The Files and Batch APIs through the unchanged openai SDK, against a real uvicorn proxy and
the Workers AI emulator over HTTP."""

from __future__ import annotations

import asyncio
import base64

import httpx
import openai
import pytest
from batch_helpers import generation_lines, image_of, jsonl, output_lines, wait_for

from flux_proxy.models import find_model

FAST = {"batch_poll_seconds": 0.1}
# The model table's price of one line (flux-1-schnell at its default size and steps).
PRICE = find_model("flux-1-schnell").estimate_neurons(None, None, None)


@pytest.fixture
def batch_proxy(make_proxy, tmp_path):
    return make_proxy(data_dir=tmp_path / "data", **FAST)


@pytest.fixture
def client(batch_proxy):
    with openai.OpenAI(
        base_url=batch_proxy.base_url, api_key=batch_proxy.key, max_retries=0, timeout=30
    ) as sdk:
        yield sdk


def test_a_batch_of_generations_completes_with_one_upstream_call_per_line(
    client, batch_proxy, emulator
):
    lines = generation_lines(5)
    lines[0]["body"]["response_format"] = "b64_json"
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.object == "file" and uploaded.purpose == "batch"
    assert uploaded.bytes == len(jsonl(lines))
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/images/generations",
        completion_window="24h",
        metadata={"shoot": "spring"},
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 5
    assert batch.model_extra["estimated_neurons"] == pytest.approx(5 * PRICE)
    done = wait_for(client, batch.id, ("completed", "failed", "expired"))
    assert done.status == "completed", done
    assert done.request_counts.completed == 5 and done.request_counts.failed == 0
    assert done.completed_at and done.finalizing_at and done.in_progress_at
    assert done.metadata == {"shoot": "spring"} and done.error_file_id is None
    assert done.model_extra["neurons_used"] == pytest.approx(5 * PRICE)

    out = output_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in out) == [f"line-{i}" for i in range(5)]
    for line in out:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        entry = line["response"]["body"]["data"][0]
        assert image_of(entry).size == (1024, 1024)
    first = next(line for line in out if line["custom_id"] == "line-0")
    assert "url" not in first["response"]["body"]["data"][0]  # its response_format was b64
    others = [line for line in out if line["custom_id"] != "line-0"]
    for line in others:  # no response_format: a URL only, kept as long as the output file
        entry = line["response"]["body"]["data"][0]
        assert entry["url"].startswith(batch_proxy.url) and "b64_json" not in entry
    assert len(emulator.calls()) == 5
    metrics = httpx.get(batch_proxy.url + "/metrics", timeout=10).text
    assert 'flux_proxy_batch_lines_total{outcome="completed"} 5.0' in metrics
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"

    # The URLs outlive a live answer's hour: they last as long as the output file.
    url = others[0]["response"]["body"]["data"][0]["url"]
    batch_proxy.clock.advance(batch_proxy.settings.image_ttl_seconds + 60)
    assert httpx.get(url, timeout=10).status_code == 200
    batch_proxy.clock.advance(batch_proxy.settings.batch_output_ttl)
    assert httpx.get(url, timeout=10).status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)


def test_files_are_listed_by_purpose_paged_and_deleted(client, png):
    batch_file = client.files.create(file=("a.jsonl", jsonl(generation_lines(1))), purpose="batch")
    image_file = client.files.create(file=("ref.png", png()), purpose="vision")
    assert image_file.bytes == len(png())
    assert [f.id for f in client.files.list(purpose="vision")] == [image_file.id]
    first_page = client.files.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more
    assert {f.id for f in client.files.list()} == {batch_file.id, image_file.id}
    assert client.files.content(image_file.id).content == png()
    deleted = client.files.delete(image_file.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(image_file.id)


def test_bad_uploads_are_refused_with_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("x.jsonl", b"{}"), purpose="fine-tune")
    assert refused.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as not_image:
        client.files.create(file=("x.png", b"not an image"), purpose="vision")
    assert not_image.value.body["param"] == "file"


def test_file_size_limit_is_a_setting(make_proxy, tmp_path):
    small = make_proxy(data_dir=tmp_path / "d", files_max_bytes=100, **FAST)
    sdk = openai.OpenAI(base_url=small.base_url, api_key=small.key, max_retries=0)
    with sdk, pytest.raises(openai.APIStatusError) as refused:
        sdk.files.create(file=("big.jsonl", b"x" * 101), purpose="batch")
    assert refused.value.status_code == 413


def test_a_bad_line_fails_the_whole_batch_and_spends_nothing(client, emulator):
    lines = generation_lines(4)
    lines[1]["body"]["size"] = "99999x3"
    lines[2]["custom_id"] = "line-0"  # a duplicate
    lines[3]["url"] = "/v1/chat/completions"
    uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
    )
    assert batch.status == "failed" and batch.failed_at
    errors = {(e.line, e.param, e.code) for e in batch.errors.data}
    assert errors == {
        (2, "size", "invalid_value"),
        (3, "custom_id", "duplicate_custom_id"),
        (4, "url", "invalid_value"),
    }
    assert emulator.calls() == []
    assert client.batches.retrieve(batch.id).status == "failed"


def test_other_endpoints_and_windows_are_a_clear_400(client):
    uploaded = client.files.create(file=("in.jsonl", jsonl(generation_lines(1))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as wrong:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert wrong.value.body["param"] == "endpoint"
    assert "/v1/images/generations" in wrong.value.body["message"]
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="1h"
        )
    assert window.value.body["param"] == "completion_window"
    longer = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="7d"
    )
    assert longer.expires_at - longer.created_at == 7 * 86400


def test_an_edits_batch_takes_data_urls_and_uploaded_file_ids(client, emulator, png, jpeg):
    reference = client.files.create(file=("ref.jpg", jpeg(80, 60)), purpose="user_data")
    data_url = "data:image/png;base64," + base64.b64encode(png(64, 48)).decode()
    lines = [
        {
            "custom_id": "by-data-url",
            "method": "POST",
            "url": "/v1/images/edits",
            "body": {"model": "flux-2-klein-4b", "prompt": "make it blue", "images": [data_url]},
        },
        {
            "custom_id": "by-file-id",
            "method": "POST",
            "url": "/v1/images/edits",
            "body": {
                "model": "flux-2-klein-4b",
                "prompt": "make it green",
                "image_file_ids": [reference.id],
                "response_format": "b64_json",
            },
        },
    ]
    uploaded = client.files.create(file=("edits.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/edits", completion_window="24h"
    )
    done = wait_for(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done
    out = {line["custom_id"]: line for line in output_lines(client, done.output_file_id)}
    for line in out.values():
        image_of(line["response"]["body"]["data"][0])
    calls = emulator.calls()
    assert len(calls) == 2
    sizes = sorted((f["width"], f["height"]) for c in calls for f in c["files"].values())
    assert sizes == [(64, 48), (80, 60)]


def test_the_estimate_endpoint_answers_with_the_batch_objects_figures(batch_proxy):
    bodies = [{"model": "flux-1-schnell", "prompt": f"p{i}"} for i in range(4)]
    answer = httpx.post(
        batch_proxy.base_url + "/batches/estimate",
        json={"endpoint": "/v1/images/generations", "bodies": bodies},
        headers=batch_proxy.auth,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["lines"] == 4 and body["estimated_neurons"] == pytest.approx(4 * PRICE)
    assert body["estimated_days"] == 1 and body["estimated_completion_at"] >= 0
    bad = httpx.post(
        batch_proxy.base_url + "/batches/estimate",
        json={"endpoint": "/v1/images/generations", "bodies": [{"prompt": "x", "n": 99}]},
        headers=batch_proxy.auth,
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "bodies[0].n"


def test_batches_are_listed_newest_first_and_paged(client):
    uploaded = client.files.create(file=("in.jsonl", jsonl(generation_lines(1))), purpose="batch")
    made = [
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]  # the SDK pages on


def test_files_and_batches_answer_503_while_the_shared_state_is_away(make_proxy, tmp_path):
    from procs import free_port

    from flux_proxy.clock import FrozenClock
    from flux_proxy.store.memory import MemoryStore
    from flux_proxy.store.redis import RedisStore
    from flux_proxy.store.resilient import ResilientStore

    clock = FrozenClock(1_750_000_000.0)
    away = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "t:", clock, socket_timeout=0.2)
    store = ResilientStore(away, MemoryStore(clock), clock=clock)
    asyncio.run(store.open())  # a store passed in is the caller's to open: Redis is away
    proxy = make_proxy(clock=clock, store=store, data_dir=tmp_path / "d", **FAST)
    with openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as unavailable:
            sdk.files.create(file=("in.jsonl", jsonl(generation_lines(1))), purpose="batch")
        assert unavailable.value.status_code == 503
        assert unavailable.value.body["code"] == "state_store_unavailable"
        with pytest.raises(openai.InternalServerError):
            sdk.batches.list()


def test_cancelling_a_finished_batch_is_a_409_the_sdk_does_not_retry(batch_proxy, emulator):
    # The SDK retries 409 twice by default (a lock timeout, for OpenAI); a finished batch
    # stays finished, so the proxy says so and the default client raises at once.
    with openai.OpenAI(base_url=batch_proxy.base_url, api_key=batch_proxy.key) as sdk:
        uploaded = sdk.files.create(file=("in.jsonl", jsonl(generation_lines(1))), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
        )
        assert wait_for(sdk, batch.id, ("completed", "failed")).status == "completed"
        with pytest.raises(openai.ConflictError) as refused:
            sdk.batches.cancel(batch.id)
    assert refused.value.body["code"] == "batch_not_cancellable"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert refused.value.response.request.headers["x-stainless-retry-count"] == "0"


def test_a_files_expires_after_sets_its_expiry(client, batch_proxy):
    # openai's files.create(expires_after={"anchor": "created_at", "seconds": N}) sends
    # expires_after[anchor] and expires_after[seconds] as form fields.
    body = jsonl(generation_lines(1))
    uploaded = client.files.create(
        file=("in.jsonl", body),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert uploaded.expires_at == uploaded.created_at + 3600
    assert client.files.retrieve(uploaded.id).expires_at == uploaded.expires_at
    batch_proxy.clock.advance(3601)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)

    longest = client.files.create(
        file=("in.jsonl", body),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 2592000},
    )
    assert longest.expires_at == longest.created_at + batch_proxy.settings.files_ttl_seconds
    for wrong, param in (
        ({"anchor": "created_at", "seconds": 60}, "expires_after[seconds]"),
        ({"anchor": "created_at", "seconds": "soon"}, "expires_after[seconds]"),
        ({"anchor": "last_active_at", "seconds": 3600}, "expires_after[anchor]"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("in.jsonl", body), purpose="batch", expires_after=wrong)
        assert refused.value.body["param"] == param


def test_a_batchs_output_expires_after_sets_its_output_files_expiry(client, batch_proxy):
    # batches.create(output_expires_after={"anchor": "created_at", "seconds": N}): the output
    # (and error) file expires N seconds after it is written, within BATCH_OUTPUT_TTL.
    uploaded = client.files.create(file=("in.jsonl", jsonl(generation_lines(1))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/images/generations",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert "output_ttl" not in batch.model_extra
    done = wait_for(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done
    output = client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 3600
    batch_proxy.clock.advance(3601)
    with pytest.raises(openai.NotFoundError):
        client.files.content(done.output_file_id)

    for wrong, param in (
        ({"anchor": "created_at", "seconds": 10}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": "soon"}, "output_expires_after.seconds"),
        ({"anchor": "completed_at", "seconds": 3600}, "output_expires_after.anchor"),
        ("1h", "output_expires_after"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/images/generations",
                completion_window="24h",
                output_expires_after=wrong,
            )
        assert refused.value.body["param"] == param
