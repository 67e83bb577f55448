"""Helpers for the Files/Batch API tests: JSONL inputs, waiting for a batch, reading output."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
from PIL import Image


def jsonl(lines: list[dict]) -> bytes:
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def generation_lines(count: int, **body) -> list[dict]:
    body.setdefault("model", "flux-1-schnell")
    return [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": f"product shot number {i}", **body},
        }
        for i in range(count)
    ]


def wait_for(client, batch_id: str, statuses: tuple[str, ...], timeout: float = 60.0):
    """Poll `batches.retrieve` until the batch reaches one of `statuses`."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch stayed {batch.status}: {batch}")
        time.sleep(0.1)


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def output_lines(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def image_of(entry: dict, auth: dict | None = None) -> Image.Image:
    """The image of one `data[]` entry: its base64, or else the bytes behind its URL."""
    if entry.get("b64_json"):
        data = base64.b64decode(entry["b64_json"])
    else:
        response = httpx.get(entry["url"], timeout=10)
        response.raise_for_status()
        data = response.content
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
