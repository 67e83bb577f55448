#!/usr/bin/env python3
"""Generate one image with the openai SDK, the way you would from OpenAI, and save it.

    FLUX_PROXY_BASE_URL=http://127.0.0.1:8000/v1 FLUX_PROXY_API_KEY=... python openai_generate.py

Workers AI knobs the OpenAI API has no name for (steps, seed, guidance, width/height) go in
`extra_body`. The answer carries the image as base64 *and* as a URL on the proxy.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import openai

BASE_URL = os.environ.get("FLUX_PROXY_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("FLUX_PROXY_API_KEY", "no-key")  # the proxy's API_MASTER_KEY
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "out"))


def main() -> int:
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY)
    result = client.images.generate(
        model="flux-2-dev",  # or "flux-2-klein-4b", the full "@cf/..." id, or "dall-e-3"
        prompt="A serene Japanese garden with cherry blossoms, morning mist",
        size="1024x768",
        extra_body={"steps": 25, "seed": 42},
    )
    image = result.data[0]
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"generate.{result.output_format or 'png'}"
    path.write_bytes(base64.b64decode(image.b64_json))
    extra = result.model_extra or {}
    print(f"model:   {extra.get('model')}")
    print(f"account: {extra.get('account_used')}  seed: {extra.get('seed')}  size: {result.size}")
    print(f"url:     {image.url}")
    print(f"saved:   {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except openai.APIError as error:
        print(f"failed: {error}", file=sys.stderr)
        sys.exit(1)
