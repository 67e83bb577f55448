#!/usr/bin/env python3
"""Character consistency: one new picture from 2-4 reference images of the same character.

    python openai_edit_references.py front.jpg side.jpg back.jpg

With no arguments it draws three small reference images itself (a stick figure in three
colours), so it runs anywhere. The SDK sends a list of images as `image[]`; the proxy passes
them to FLUX.2 as input_image_0..3, scaling any over 511 pixels down first.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import openai
from PIL import Image, ImageDraw

BASE_URL = os.environ.get("FLUX_PROXY_BASE_URL", "http://127.0.0.1:8000/v1")
API_KEY = os.environ.get("FLUX_PROXY_API_KEY", "no-key")
OUTPUT_DIR = Path(os.environ.get("OUTPUT_DIR", "out"))


def drawn_reference(color: tuple[int, int, int], lean: int) -> bytes:
    """A 256x256 stick figure: enough for the model (and the emulator) to take as a reference."""
    image = Image.new("RGB", (256, 256), (245, 240, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((108, 30, 148, 70), fill=color)
    draw.line((128, 70, 128 + lean, 160), fill=color, width=8)
    draw.line((128 + lean, 160, 98, 230), fill=color, width=8)
    draw.line((128 + lean, 160, 158, 230), fill=color, width=8)
    draw.line((88, 100, 168, 100), fill=color, width=8)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def references(paths: list[str]) -> list[tuple[str, bytes, str]]:
    if paths:
        if not 2 <= len(paths) <= 4:
            raise SystemExit("give 2 to 4 reference images")
        return [(Path(p).name, Path(p).read_bytes(), "application/octet-stream") for p in paths]
    drawn = [((200, 40, 40), 0), ((40, 120, 200), 12), ((40, 160, 80), -12)]
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    files = []
    for index, (color, lean) in enumerate(drawn):
        data = drawn_reference(color, lean)
        (OUTPUT_DIR / f"reference_{index}.png").write_bytes(data)
        files.append((f"reference_{index}.png", data, "image/png"))
    return files


def main(paths: list[str]) -> int:
    images = references(paths)
    client = openai.OpenAI(base_url=BASE_URL, api_key=API_KEY)
    result = client.images.edit(
        model="flux-2-dev",
        image=images,
        prompt=(
            "The same character as in the reference images, in three poses side by side: "
            "standing, sitting, running. Keep the face, clothes and colours identical."
        ),
        size="1024x768",
        response_format="b64_json",
    )
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"edit_references.{result.output_format or 'png'}"
    path.write_bytes(base64.b64decode(result.data[0].b64_json))
    print(f"{len(images)} reference images -> {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except openai.APIError as error:
        print(f"failed: {error}", file=sys.stderr)
        sys.exit(1)
