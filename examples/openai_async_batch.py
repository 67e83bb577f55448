#!/usr/bin/env python3
"""Many images at once with AsyncOpenAI: the proxy spreads them over its Cloudflare accounts.

    BATCH_SIZE=8 CONCURRENCY=4 python openai_async_batch.py

Each prompt is one request; a semaphore keeps at most CONCURRENCY of them open. One failed
image does not stop the others; the script reports it and exits 1 at the end.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from pathlib import Path

import openai

BASE_URL = os.environ.get("FLUX_PROXY_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("FLUX_PROXY_API_KEY", "no-key")
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "out"))
BATCH_SIZE = int(os.environ.get("BATCH_SIZE", "6"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "4"))

SUBJECTS = ["a red fox", "a lighthouse", "a paper boat", "a mountain cabin", "a koi pond",
            "a hot-air balloon", "a desert oasis", "a snowy owl", "a tram at night"]  # fmt: skip


async def one(client: openai.AsyncOpenAI, gate: asyncio.Semaphore, index: int) -> Path:
    prompt = f"{SUBJECTS[index % len(SUBJECTS)]}, watercolour illustration"
    async with gate:
        result = await client.images.generate(
            model="flux-2-klein-4b",  # fast: 4 fixed steps
            prompt=prompt,
            size="512x512",
            response_format="b64_json",
        )
    path = OUTPUT_DIR / f"batch_{index:02d}.{result.output_format or 'png'}"
    await asyncio.to_thread(path.write_bytes, base64.b64decode(result.data[0].b64_json))
    account = (result.model_extra or {}).get("account_used")
    print(f"[{index:02d}] account {account}: {prompt} -> {path}")
    return path


async def main() -> int:
    gate = asyncio.Semaphore(CONCURRENCY)
    started = time.perf_counter()
    async with openai.AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY) as client:
        results = await asyncio.gather(
            *(one(client, gate, i) for i in range(BATCH_SIZE)), return_exceptions=True
        )
    failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    for index, error in failed:
        print(f"[{index:02d}] failed: {error}", file=sys.stderr)
    made = BATCH_SIZE - len(failed)
    print(f"{made}/{BATCH_SIZE} images in {time.perf_counter() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    sys.exit(asyncio.run(main()))
