"""The Workers AI emulator as a benchmark process, optionally with photo-sized answers.

`--payload synthetic` is exactly `flux-proxy emulator`: smooth gradient images that compress
to a few tens of kilobytes (48 KB at 1920x1080). Real FLUX.2 PNGs are megabytes, and the
proxy's costs (copying, parsing, memory) grow with the image, so `--payload photo` swaps the
emulator's drawing function for one that adds deterministic noise, giving PNGs of about
2.2 bytes per pixel (2.3 MB at 1024x1024, 4.5 MB at 1920x1080), like a detailed photo.
Everything else (paths, validation, limits, call log, the answer cache) is the emulator's own.
"""

from __future__ import annotations

import argparse
import io
import random

from PIL import Image

from flux_proxy.emulator import render, run_emulator

NOISE_SHARE = 0.1  # how much noise goes into the picture: 0.1 gives ~2.2 bytes per pixel


def render_photo(key: render.RenderKey, source: render.SourceImage | None = None) -> bytes:
    # `source` (img2img/inpainting input) is ignored: the benchmarks make FLUX.2 images only.
    size = (key.width, key.height)
    noise_source = random.Random(f"{key.prompt}|{key.seed}|{key.width}x{key.height}")
    base = Image.linear_gradient("L").resize(size).convert("RGB")
    noise = Image.frombytes("RGB", size, noise_source.randbytes(key.width * key.height * 3))
    image = Image.blend(base, noise, NOISE_SHARE)
    out = io.BytesIO()
    if key.mime == "image/jpeg":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--payload", choices=["synthetic", "photo"], default="photo")
    args = parser.parse_args()
    if args.payload == "photo":
        # `encode_answer` looks `render_image` up in its module at call time.
        render.render_image = render_photo
    run_emulator(args.host, args.port)


if __name__ == "__main__":
    main()
