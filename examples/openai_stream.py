#!/usr/bin/env python3
"""Streaming (`stream=True`), read with the openai SDK's own stream parser.

The proxy answers Server-Sent Events: keep-alive comments while the image is made, then one
`image_generation.completed` event per image (FLUX.2 makes no partial images, so
`partial_images` is accepted and yields none). A failure after the stream began arrives as an
error event, which the SDK raises as `openai.APIError`.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import openai

BASE_URL = os.environ.get("FLUX_PROXY_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("FLUX_PROXY_API_KEY", "no-key")
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "out"))


def main() -> int:
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY)
    stream = client.images.generate(
        model="flux-2-klein-4b",
        prompt="A tram crossing a bridge at night, neon reflections",
        size="768x512",
        n=2,
        stream=True,
        partial_images=1,
        output_format="webp",
    )
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    saved = 0
    for event in stream:
        print(f"event: {event.type}")
        if event.type.endswith(".completed"):
            index = (event.model_extra or {}).get("index", saved)
            path = OUTPUT_DIR / f"stream_{index}.{event.output_format}"
            path.write_bytes(base64.b64decode(event.b64_json))
            neurons = (event.usage.model_extra or {}).get("neurons")
            print(f"  {event.size} {event.output_format}, {neurons} neurons -> {path}")
            saved += 1
    if saved == 0:
        print("the stream ended without an image", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except openai.APIError as error:
        print(f"failed: {error}", file=sys.stderr)
        sys.exit(1)
