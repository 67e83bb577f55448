#!/usr/bin/env python3
"""LangChain's DALL-E tool, unchanged, pointed at the proxy.

`OpenAIDALLEImageGenerationTool` asks for `dall-e-2` at 1024x1024 and reads only the image
URL. The proxy serves `dall-e-2` with its default model (FLUX.2 [dev]) and, since the tool sets
no `response_format`, answers both base64 and a URL, so the tool works as it is. Set
`model=` to any served name ("flux-2-klein-4b", ...) to choose another model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import openai
from langchain_community.tools.openai_dalle_image_generation import (
    OpenAIDALLEImageGenerationTool,
)
from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper

BASE_URL = os.environ.get("FLUX_PROXY_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("FLUX_PROXY_API_KEY", "no-key")
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "out"))


def main() -> int:
    wrapper = DallEAPIWrapper(model="dall-e-2", base_url=BASE_URL, api_key=API_KEY)
    tool = OpenAIDALLEImageGenerationTool(api_wrapper=wrapper)
    url = tool.invoke("A watercolour of a lighthouse on a cliff at sunrise")
    if not url.startswith("http"):
        print(f"the tool returned no URL: {url}", file=sys.stderr)
        return 1
    print(f"tool answered: {url}")
    response = httpx.get(url, timeout=60)  # image URLs need no key; they expire after an hour
    response.raise_for_status()
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"langchain{Path(url).suffix or '.png'}"
    path.write_bytes(response.content)
    print(f"saved: {path} ({response.headers.get('content-type')})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (openai.APIError, httpx.HTTPError) as error:
        print(f"failed: {error}", file=sys.stderr)
        sys.exit(1)
