"""Batch input files as people and other tools write them: JSONL from JavaScript (raw U+2028 in
a string), Windows (a byte-order mark, CRLF), and edits lines without an image. Real uvicorn
proxy and emulator, the unchanged openai SDK."""

from __future__ import annotations

import json

import openai
import pytest
from batch_helpers import generation_lines, output_lines, wait_for


@pytest.fixture
def client(make_proxy, tmp_path):
    proxy = make_proxy(data_dir=tmp_path / "data", batch_poll_seconds=0.1)
    with openai.OpenAI(
        base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=30
    ) as sdk:
        yield sdk


def submit(client, data: bytes, endpoint: str = "/v1/images/generations"):
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"
    )


def test_lines_split_at_newlines_only_and_a_byte_order_mark_is_not_line_one(client, emulator):
    lines = generation_lines(3)
    # What JSON.stringify (and json.dumps(ensure_ascii=False)) write: these stay unescaped.
    lines[0]["body"]["prompt"] = "a poster\u2028second line\u2029third\u0085end"
    text = "\r\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\r\n"
    batch = submit(client, "\ufeff".encode() + text.encode())
    assert batch.status == "in_progress", batch.errors
    assert batch.request_counts.total == 3

    done = wait_for(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done
    out = {line["custom_id"]: line for line in output_lines(client, done.output_file_id)}
    assert sorted(out) == ["line-0", "line-1", "line-2"]
    prompts = [call["fields"].get("prompt") for call in emulator.calls()]
    assert lines[0]["body"]["prompt"] in prompts


def test_a_bad_line_after_a_line_separator_is_reported_on_its_own_line(client):
    lines = generation_lines(3)
    lines[0]["body"]["prompt"] = "one\u2028two"
    lines[2]["body"]["size"] = "7x7"
    batch = submit(client, "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode())
    assert batch.status == "failed"
    assert [(e.line, e.param) for e in batch.errors.data] == [(3, "size")]


def test_an_edits_line_without_an_image_names_the_fields_a_line_has(client, emulator):
    line = {
        "custom_id": "no-image",
        "method": "POST",
        "url": "/v1/images/edits",
        "body": {"model": "flux-2-klein-4b", "prompt": "make it blue"},
    }
    batch = submit(client, json.dumps(line).encode() + b"\n", endpoint="/v1/images/edits")
    assert batch.status == "failed"
    [error] = batch.errors.data
    assert error.line == 1 and error.param == "images"
    assert "image_file_ids" in error.message and "form field" not in error.message
    assert emulator.calls() == []


def test_the_batch_names_the_model_its_lines_run_on_even_when_they_name_none(client):
    unnamed = generation_lines(2)
    for line in unnamed:
        del line["body"]["model"]  # the proxy's DEFAULT_MODEL
    batch = submit(client, ("\n".join(json.dumps(x) for x in unnamed)).encode())
    done = wait_for(client, batch.id, ("completed", "failed"))
    [answer] = {
        line["response"]["body"]["model"] for line in output_lines(client, done.output_file_id)
    }
    assert batch.model == done.model == answer
    mixed = generation_lines(1) + unnamed
    mixed[1]["custom_id"] = "other"
    several = submit(client, ("\n".join(json.dumps(x) for x in mixed)).encode())
    assert several.model is None


def test_a_model_the_key_may_not_use_fails_the_batch_up_front(make_proxy, tmp_path, emulator):
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "carol"\nkey = "fpx-carol-key-0123456789abcdef"\nrole = "user"\n'
        'models = ["flux-2-klein-4b"]\n'
    )
    proxy = make_proxy(data_dir=tmp_path / "data", api_keys_file=keys)
    with openai.OpenAI(
        base_url=proxy.base_url, api_key="fpx-carol-key-0123456789abcdef", max_retries=0
    ) as carol:
        lines = generation_lines(2, model="flux-2-klein-4b")
        lines[1]["body"]["model"] = "flux-1-schnell"  # the key's `models` leave it out
        batch = submit(carol, "\n".join(json.dumps(x) for x in lines).encode())
        assert batch.status == "failed"
        assert [(e.line, e.param, e.code) for e in batch.errors.data] == [
            (2, "model", "model_not_allowed")
        ]
        with pytest.raises(openai.PermissionDeniedError):  # the page's estimate says so too
            carol.post(
                "/batches/estimate",
                body={"endpoint": "/v1/images/generations", "bodies": [lines[1]["body"]]},
                cast_to=object,
            )
    assert emulator.calls() == []


def test_a_line_bigger_than_the_keys_whole_day_fails_the_batch_up_front(
    make_proxy, tmp_path, emulator
):
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "dan"\nkey = "fpx-dan-key-0123456789abcdefgh"\nrole = "user"\n'
        "daily_images = 3\n"
    )
    proxy = make_proxy(data_dir=tmp_path / "data", api_keys_file=keys)
    with openai.OpenAI(
        base_url=proxy.base_url, api_key="fpx-dan-key-0123456789abcdefgh", max_retries=0
    ) as dan:
        lines = generation_lines(3)
        lines[2]["body"]["n"] = 4  # the key makes 3 a day: this line could never run
        batch = submit(dan, "\n".join(json.dumps(x) for x in lines).encode())
        assert batch.status == "failed"
        assert [(e.line, e.param, e.code) for e in batch.errors.data] == [
            (3, "n", "exceeds_key_quota")
        ]
        lines[2]["body"]["n"] = 3  # more than today's rest, but one day's worth: it waits
        assert submit(dan, "\n".join(json.dumps(x) for x in lines).encode()).status == (
            "in_progress"
        )


def test_an_admins_estimate_cannot_name_another_keys_image_file(make_proxy, tmp_path, png):
    # As `batches.create` checks a line's files as the batch owner's own, so does the estimate:
    # an admin's estimate naming Erin's image must not price a batch that could never run.
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[[keys]]\nname = "erin"\nkey = "fpx-erin-key-0123456789abcdef"\nrole = "user"\n'
    )
    proxy = make_proxy(data_dir=tmp_path / "data", api_keys_file=keys)
    with openai.OpenAI(
        base_url=proxy.base_url, api_key="fpx-erin-key-0123456789abcdef", max_retries=0
    ) as erin:
        theirs = erin.files.create(file=("ref.png", png()), purpose="vision")
    body = {"model": "flux-2-klein-4b", "prompt": "p", "image_file_ids": [theirs.id]}
    with openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0) as admin:
        with pytest.raises(openai.BadRequestError) as refused:
            admin.post(
                "/batches/estimate",
                body={"endpoint": "/v1/images/edits", "bodies": [body]},
                cast_to=object,
            )
        error = refused.value.body
        assert (error["param"], error["code"]) == ("bodies[0].image_file_ids", "file_not_found")
        own = admin.files.create(file=("mine.png", png()), purpose="vision")
        body["image_file_ids"] = [own.id]
        answer = admin.post(
            "/batches/estimate",
            body={"endpoint": "/v1/images/edits", "bodies": [body]},
            cast_to=object,
        )
        assert answer["lines"] == 1


def test_the_completion_window_is_stored_as_the_validation_read_it(client):
    for sent, kept in ((" 24h ", "24h"), ("48H", None), ("7d\n", "7d"), ("2 d", "2d")):
        uploaded = client.files.create(
            file=("in.jsonl", jsonl_of(generation_lines(1))), purpose="batch"
        )
        if kept is None:
            with pytest.raises(openai.BadRequestError):
                client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/images/generations",
                    completion_window=sent,
                )
            continue
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window=sent
        )
        assert batch.completion_window == kept
        assert client.batches.retrieve(batch.id).completion_window == kept
        client.batches.cancel(batch.id)


def test_a_batch_that_failed_validation_counts_no_requests(client, emulator):
    # OpenAI's failed-validation batch ran nothing: request_counts is all zeros, the bad
    # lines are in `errors`.
    lines = generation_lines(3)
    lines[1]["method"] = "GET"
    batch = submit(client, jsonl_of(lines))
    assert batch.status == "failed" and [e.line for e in batch.errors.data] == [2]
    for seen in (batch, client.batches.retrieve(batch.id)):
        counts = seen.request_counts
        assert (counts.total, counts.completed, counts.failed) == (0, 0, 0)
    assert emulator.calls() == []


def jsonl_of(lines: list[dict]) -> bytes:
    return "\n".join(json.dumps(x) for x in lines).encode()
