"""CPU cost of turning a decoded body into an `ImageRequest` (`build_image_request`), in
process, without HTTP: the part of the hot path the request declarations own.

    python benchmarks/parse_cost.py            # microseconds per call, median of 7 rounds

Bodies: the plain JSON generation the benchmarks send, a fuller one with most OpenAI fields,
and the same fuller one as form text.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from flux_proxy.api.body import RawRequest
from flux_proxy.api.parse import build_image_request
from flux_proxy.settings import Settings

BODIES = {
    "plain json": (
        {"prompt": "a lighthouse at dusk", "size": "1024x1024", "response_format": "b64_json"},
        False,
    ),
    "full json": (
        {
            "prompt": "a lighthouse at dusk",
            "model": "flux-2-dev",
            "n": 2,
            "size": "1024x768",
            "steps": 20,
            "seed": 7,
            "guidance": 4.5,
            "response_format": "url",
            "output_format": "webp",
            "output_compression": 80,
            "quality": "high",
            "background": "auto",
            "user": "u-1",
        },
        False,
    ),
    "full form": (
        {
            "prompt": "a lighthouse at dusk",
            "model": "flux-2-dev",
            "n": "2",
            "size": "1024x768",
            "steps": "20",
            "seed": "7",
            "guidance": "4.5",
            "response_format": "url",
            "output_format": "webp",
            "output_compression": "80",
            "quality": "high",
        },
        True,
    ),
}


async def per_call_us(fields: dict, is_form: bool, settings: Settings, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await build_image_request(RawRequest(dict(fields), is_form=is_form), settings, edit=False)
    return (time.process_time() - start) / calls * 1e6


async def main() -> None:
    settings = Settings(accounts=[])
    for name, (fields, is_form) in BODIES.items():
        await per_call_us(fields, is_form, settings, 2000)  # warm up
        rounds = [await per_call_us(fields, is_form, settings, 5000) for _ in range(7)]
        print(f"{name:12s} {statistics.median(rounds):7.1f} us/call (min {min(rounds):.1f})")


if __name__ == "__main__":
    asyncio.run(main())
