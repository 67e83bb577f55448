"""An edits batch whose lines carry `data:` URLs keeps those lines on disk (the batch's lines
blob under DATA_DIR/files), not in the state store: on memory, SQLite and Redis the store
queues small references, and every line still runs once with its own image. Real uvicorn
proxy and emulator, the unchanged openai SDK."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import uuid

import openai
import pytest
import redis
from batch_helpers import image_of, jsonl, output_lines, wait_for
from conftest import OWN_STORE
from PIL import Image

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SMALL = 1024  # a queued reference (or a prompt-only line) is far below this


def _noise_png(side: int) -> bytes:
    """A PNG that does not compress: its data: URL is some 350 KB."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def _edit_line(custom_id: str, **body) -> dict:
    body = {"model": "flux-2-klein-4b", "prompt": "make it blue", **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/images/edits", "body": body}


def _queued_payloads(backend: str, proxy, batch_id: str, prefix: str) -> list[str]:
    """What the store holds for the batch's lines, read straight from its storage."""
    if backend == "memory":
        return [line.payload for line in proxy.store._lines[batch_id]]
    if backend == "sqlite":
        with sqlite3.connect(proxy.settings.data_dir / "state.sqlite3") as db:
            rows = db.execute("SELECT payload FROM batch_lines WHERE batch = ?", (batch_id,))
            return [payload for (payload,) in rows]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        entries = client.xrange(f"{prefix}lines:{batch_id}")
        return [fields[b"payload"].decode() for _, fields in entries]
    finally:
        client.close()


@pytest.fixture
def redis_prefix():
    prefix = f"test-big-lines-{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_data_url_lines_stay_on_disk_and_each_runs_once(
    backend, make_proxy, emulator, tmp_path, redis_prefix, png
):
    settings: dict = {"data_dir": tmp_path / "data", "batch_poll_seconds": 0.1}
    if backend == "sqlite":
        settings |= {"state_backend": "sqlite", "store": OWN_STORE}
    elif backend == "redis":
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        except redis.RedisError:
            pytest.skip("no Redis answers at REDIS_URL")
        settings |= {"state_backend": "redis", "redis_url": REDIS_URL, "store": OWN_STORE}
        settings["redis_prefix"] = redis_prefix
    proxy = make_proxy(**settings)
    pictures = [_noise_png(256), _noise_png(256)]
    urls = ["data:image/png;base64," + base64.b64encode(p).decode() for p in pictures]
    emulator._post("config", {"latency": 1.5})  # the lines stay queued while we look
    try:
        with openai.OpenAI(
            base_url=proxy.base_url, api_key=proxy.key, max_retries=0, timeout=60
        ) as client:
            reference = client.files.create(file=("ref.png", png(64, 64)), purpose="vision")
            lines = [
                _edit_line("data-0", images=[urls[0]], response_format="b64_json"),
                _edit_line("file-1", image_file_ids=[reference.id]),
                _edit_line("data-2", images=[urls[1]]),
            ]
            uploaded = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            assert uploaded.bytes > 2 * len(urls[0])
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/images/edits", completion_window="24h"
            )
            assert batch.status == "in_progress", batch
            queued = _queued_payloads(backend, proxy, batch.id, redis_prefix)
            assert len(queued) == 3
            assert max(len(payload) for payload in queued) < SMALL, [len(q) for q in queued]
            # The uploaded input may go: the batch runs from its own copy of the big lines.
            client.files.delete(uploaded.id)
            done = wait_for(client, batch.id, ("completed", "failed", "expired"))
            assert done.status == "completed" and done.request_counts.completed == 3, done
            kept = {line["custom_id"]: line for line in output_lines(client, done.output_file_id)}
    finally:
        emulator._post("config", {"latency": 0.0})
    assert set(kept) == {"data-0", "file-1", "data-2"}
    for line in kept.values():
        image_of(line["response"]["body"]["data"][0]).load()
    calls = emulator.calls()
    assert len(calls) == 3  # each line once
    sent = {json.dumps(sorted(c["files"].values(), key=str)) for c in calls}
    assert len(sent) == 3  # each with its own image
    files_dir = tmp_path / "data" / "files"
    assert not [p.name for p in files_dir.iterdir() if p.name.startswith("batch-lines-")]
