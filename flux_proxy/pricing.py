"""What a Workers AI image costs, in neurons, as Cloudflare prices and bills it."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Pricing:
    """Neurons per call. A tile is 512x512 pixels of area (fractional, so 1920x1080 is 7.91
    tiles, not 12: rounding up per side would price a free account out of full-HD images).

    Cloudflare's "per step" prices are charged per output tile per step: every observed
    `cf-ai-neurons` fits that (flux-1-schnell 1024x1024 at 4 steps = 4.8*4 + 9.6*4*4 = 172.80;
    phoenix-1.0 1024x1024 at 25 steps = 530*4 + 10*4*25 = 3,120), so there is no flat
    per-call-step term.

    FLUX.2 [klein] 9B is priced by megapixel, and its megapixel is 1024x1024 pixels: the
    first one of output, each further started one of output, and the input images' area in
    started megapixels of its own (a 1024x1024 image is exactly 1,363.64, as observed).
    Rounding further megapixels up is our reading (*unconfirmed*); it never under-estimates.

    Every term defaults to zero, so each model states only the terms Cloudflare lists for it.
    """

    per_output_tile: float = 0.0
    per_output_tile_step: float = 0.0
    per_input_tile: float = 0.0
    per_input_tile_step: float = 0.0
    first_megapixel: float = 0.0
    per_extra_megapixel: float = 0.0
    per_input_megapixel: float = 0.0

    def estimate(
        self,
        width: int,
        height: int,
        steps: int,
        reference_sizes: tuple[tuple[int, int], ...] = (),
    ) -> float:
        out_tiles = tiles(width, height)
        in_tiles = sum(tiles(w, h) for w, h in reference_sizes)
        neurons = (
            self.per_output_tile * out_tiles
            + self.per_output_tile_step * out_tiles * steps
            + self.per_input_tile * in_tiles
            + self.per_input_tile_step * in_tiles * steps
        )
        if self.first_megapixel or self.per_extra_megapixel:
            output_megapixels = megapixels(width * height)
            neurons += self.first_megapixel
            neurons += self.per_extra_megapixel * max(0, output_megapixels - 1)
        if self.per_input_megapixel and reference_sizes:
            input_pixels = sum(w * h for w, h in reference_sizes)
            neurons += self.per_input_megapixel * megapixels(input_pixels)
        return round(neurons, 2)


def tiles(width: int, height: int) -> float:
    return width * height / (512 * 512)


MEGAPIXEL = 1024 * 1024  # as Cloudflare prices FLUX.2 [klein] 9B: "first MP (1024x1024)"


def megapixels(pixels: int) -> int:
    """Started megapixels: 1 for anything up to 1024x1024 pixels, 2 just above, ..."""
    return math.ceil(pixels / MEGAPIXEL)
