#!/usr/bin/env python3
"""A FLUX.2 structured (JSON) prompt with an exact colour palette.

FLUX.2 reads a JSON prompt: scene, subjects, style, and `color_palette` as hex codes. Send the
object itself as `prompt` (the proxy passes it upstream as compact JSON text, like the seed
project did); the openai SDK wants a string there, so the object goes in `extra_body`, which
wins over the named argument. Sending `json.dumps(obj)` as a plain string works as well.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import openai

BASE_URL = os.environ.get("FLUX_PROXY_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("FLUX_PROXY_API_KEY", "no-key")
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "out"))

PROMPT = {
    "scene": "a futuristic city street at dusk after rain",
    "subjects": [
        {"type": "delivery robot", "pose": "rolling past a noodle stall", "expression": "friendly"}
    ],
    "style": "cyberpunk digital art, cinematic lighting",
    "color_palette": ["#00FFFF", "#FF00FF", "#1A1A2E"],
    "camera": {"angle": "low", "lens": "35mm"},
}


def main() -> int:
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY)
    result = client.images.generate(
        prompt="(replaced by extra_body)",
        size="1024x768",
        response_format="b64_json",
        extra_body={"prompt": PROMPT, "seed": 7},
    )
    sent = result.data[0].revised_prompt or ""  # what went upstream
    if json.loads(sent) != PROMPT:
        print(f"the JSON prompt did not arrive intact: {sent}", file=sys.stderr)
        return 1
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"json_prompt.{result.output_format or 'png'}"
    path.write_bytes(base64.b64decode(result.data[0].b64_json))
    print(f"prompt sent upstream: {sent}")
    print(f"saved: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except openai.APIError as error:
        print(f"failed: {error}", file=sys.stderr)
        sys.exit(1)
