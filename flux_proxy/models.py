"""The one table of Workers AI image models.

The request validator, the Workers AI client, `/v1/models`, the web page and the emulator all
read these descriptions, so adding a model is one entry here, not an `if model == ...` in five
places. Facts come from `workers-ai.md`; where Cloudflare documents no bound we pick a
conservative one and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

BodyFormat = Literal["multipart", "json"]
AnswerFormat = Literal["base64_json", "raw_bytes"]


@dataclass(frozen=True)
class IntRange:
    minimum: int
    maximum: int

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.minimum <= value <= self.maximum


@dataclass(frozen=True)
class FloatRange:
    minimum: float
    maximum: float

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and self.minimum <= value <= self.maximum


@dataclass(frozen=True)
class Pricing:
    """Neurons per call. A tile is 512x512 pixels of area (fractional, so 1920x1080 is 7.91
    tiles, not 12: rounding up per side would price a free account out of full-HD images);
    a megapixel is 10^6 pixels.

    Every term defaults to zero, so each model states only the terms Cloudflare lists for it.
    """

    per_output_tile: float = 0.0
    per_output_tile_step: float = 0.0
    per_input_tile: float = 0.0
    per_input_tile_step: float = 0.0
    per_step: float = 0.0
    first_megapixel: float = 0.0
    per_extra_megapixel: float = 0.0

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
            + self.per_step * steps
        )
        if self.first_megapixel or self.per_extra_megapixel:
            megapixels = (width * height + sum(w * h for w, h in reference_sizes)) / 1_000_000
            neurons += self.first_megapixel
            neurons += self.per_extra_megapixel * max(0.0, math.ceil(megapixels) - 1)
        return round(neurons, 2)


def tiles(width: int, height: int) -> float:
    return width * height / (512 * 512)


@dataclass(frozen=True)
class ModelSpec:
    """How to call one model and what it accepts.

    Parameter names are the *upstream* field names; `None` means the model takes no such
    parameter, and a caller who sends one gets a 400 naming it.
    """

    id: str
    short_name: str
    owned_by: str
    description: str
    body: BodyFormat
    answer: AnswerFormat
    answer_mime: str | None  # what raw answers are; base64 answers are sniffed from the bytes
    pricing: Pricing
    typical_seconds: float  # for progress bars; a guess at 1024x1024 with default steps
    # size
    size_range: IntRange | None
    default_width: int | None
    default_height: int | None
    # steps
    steps_field: str | None = "steps"
    steps_range: IntRange | None = None
    default_steps: int | None = None
    fixed_steps: int | None = None  # billed/used but not settable (klein)
    # other knobs
    guidance_range: FloatRange | None = None
    takes_seed: bool = True
    takes_negative_prompt: bool = False
    max_references: int = 0
    max_reference_side: int = 511  # FLUX.2 needs every input image smaller than 512x512
    # img2img / inpainting: references[0] is the image to change; the mask says where
    takes_mask: bool = False
    strength_range: FloatRange | None = None
    prompt_max_chars: int = 10_000
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def takes_size(self) -> bool:
        return self.size_range is not None

    @property
    def takes_steps(self) -> bool:
        return self.steps_range is not None

    @property
    def takes_references(self) -> bool:
        return self.max_references > 0

    def effective_steps(self, requested: int | None) -> int:
        """The step count the call will run with (for pricing)."""
        if self.fixed_steps is not None:
            return self.fixed_steps
        return requested if requested is not None else (self.default_steps or 0)

    def estimate_neurons(
        self,
        width: int | None,
        height: int | None,
        steps: int | None,
        reference_sizes: tuple[tuple[int, int], ...] = (),
    ) -> float:
        return self.pricing.estimate(
            width or self.default_width or 1024,
            height or self.default_height or 1024,
            self.effective_steps(steps),
            reference_sizes,
        )


_FLUX2_SIZE = IntRange(256, 1920)

_FLUX2_DEV = ModelSpec(
    id="@cf/black-forest-labs/flux-2-dev",
    short_name="flux-2-dev",
    owned_by="black-forest-labs",
    description="FLUX.2 [dev]: best quality, up to 4 reference images, settable steps.",
    body="multipart",
    answer="base64_json",
    answer_mime=None,
    pricing=Pricing(per_output_tile_step=37.5, per_input_tile_step=18.75),
    typical_seconds=25.0,
    size_range=_FLUX2_SIZE,
    default_width=1024,
    default_height=768,
    # Cloudflare documents no maximum; 50 matches the seed's slider and bounds the cost.
    steps_range=IntRange(1, 50),
    default_steps=25,
    guidance_range=FloatRange(0.0, 20.0),
    max_references=4,
)


def _flux2_klein(size: str, pricing: Pricing, typical_seconds: float) -> ModelSpec:
    """FLUX.2 [klein] takes what [dev] takes, except steps: fixed at 4 and not settable."""
    return replace(
        _FLUX2_DEV,
        id=f"@cf/black-forest-labs/flux-2-klein-{size.lower()}",
        short_name=f"flux-2-klein-{size.lower()}",
        description=f"FLUX.2 [klein] {size}: fast, 4 fixed steps, up to 4 reference images.",
        pricing=pricing,
        typical_seconds=typical_seconds,
        steps_field=None,
        steps_range=None,
        default_steps=None,
        fixed_steps=4,
    )


MODELS: tuple[ModelSpec, ...] = (
    _FLUX2_DEV,
    _flux2_klein("4B", Pricing(per_output_tile=26.05, per_input_tile=5.37), 4.0),
    _flux2_klein("9B", Pricing(first_megapixel=1363.64, per_extra_megapixel=181.82), 6.0),
    ModelSpec(
        id="@cf/black-forest-labs/flux-1-schnell",
        short_name="flux-1-schnell",
        owned_by="black-forest-labs",
        description="FLUX.1 [schnell]: JSON body, at most 8 steps, fixed 1024x1024 output.",
        body="json",
        answer="base64_json",
        answer_mime="image/jpeg",
        pricing=Pricing(per_output_tile=4.8, per_step=9.6),
        typical_seconds=3.0,
        size_range=None,  # width/height are rejected upstream with 5006
        default_width=1024,
        default_height=1024,
        steps_range=IntRange(1, 8),
        default_steps=4,
        takes_seed=False,
        prompt_max_chars=2048,
    ),
    ModelSpec(
        id="@cf/leonardo/lucid-origin",
        short_name="lucid-origin",
        owned_by="leonardo",
        description="Leonardo Lucid Origin: JSON body, sizes up to 2500.",
        body="json",
        answer="base64_json",
        answer_mime=None,
        pricing=Pricing(per_output_tile=636, per_step=12),
        typical_seconds=10.0,
        size_range=IntRange(256, 2500),
        default_width=1120,
        default_height=1120,
        steps_range=IntRange(1, 40),
        default_steps=20,
        guidance_range=FloatRange(0.0, 10.0),
    ),
    ModelSpec(
        id="@cf/leonardo/phoenix-1.0",
        short_name="phoenix-1.0",
        owned_by="leonardo",
        description="Leonardo Phoenix 1.0: JSON body, answers raw JPEG bytes.",
        body="json",
        answer="raw_bytes",
        answer_mime="image/jpeg",
        pricing=Pricing(per_output_tile=530, per_step=10),
        typical_seconds=10.0,
        size_range=IntRange(256, 2048),
        default_width=1024,
        default_height=1024,
        steps_field="num_steps",
        steps_range=IntRange(1, 50),
        default_steps=25,
        guidance_range=FloatRange(2.0, 10.0),
        takes_negative_prompt=True,
    ),
    *(
        ModelSpec(
            id=model_id,
            short_name=model_id.rsplit("/", 1)[1],
            owned_by=model_id.split("/")[1],
            description=description,
            body="json",
            answer="raw_bytes",
            answer_mime="image/png",
            # Cloudflare lists no neuron price for these; the budget counts cf-ai-neurons.
            pricing=Pricing(),
            typical_seconds=seconds,
            size_range=IntRange(256, 2048),
            default_width=1024,
            default_height=1024,
            steps_field="num_steps",
            steps_range=IntRange(1, 20),
            default_steps=default_steps,
            guidance_range=FloatRange(0.0, 30.0),
            takes_negative_prompt=True,
        )
        for model_id, description, seconds, default_steps in (
            (
                "@cf/stabilityai/stable-diffusion-xl-base-1.0",
                "Stable Diffusion XL base 1.0: answers raw PNG bytes.",
                8.0,
                20,
            ),
            (
                "@cf/bytedance/stable-diffusion-xl-lightning",
                "SDXL Lightning: few-step SDXL, answers raw PNG bytes.",
                3.0,
                8,
            ),
            (
                "@cf/lykon/dreamshaper-8-lcm",
                "DreamShaper 8 LCM: answers raw PNG bytes.",
                3.0,
                8,
            ),
        )
    ),
)

DEFAULT_MODEL_ID = "@cf/black-forest-labs/flux-2-dev"
# Tools that hard-code OpenAI model names (LangChain defaults to dall-e-2) get the default model.
DEFAULT_ALIASES = {
    "dall-e-2": DEFAULT_MODEL_ID,
    "dall-e-3": DEFAULT_MODEL_ID,
    "gpt-image-1": DEFAULT_MODEL_ID,
}

_BY_NAME: dict[str, ModelSpec] = {}
for _spec in MODELS:
    _BY_NAME[_spec.id] = _spec
    _BY_NAME[_spec.short_name] = _spec


def find_model(name: str, aliases: dict[str, str] | None = None) -> ModelSpec | None:
    """Look a model up by full `@cf/...` id, short name, or alias (aliases may chain once)."""
    name = name.strip()
    spec = _BY_NAME.get(name)
    if spec is None and aliases and name in aliases:
        spec = _BY_NAME.get(aliases[name])
    return spec


def model_names() -> list[str]:
    return [spec.id for spec in MODELS]
