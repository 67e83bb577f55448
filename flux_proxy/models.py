"""The one table of Workers AI image models.

The request validator, the Workers AI client, `/v1/models`, the web page, the emulator and
`flux-proxy models --check` all read these descriptions, so adding a model is one entry here,
not an `if model == ...` in five places.

Names, ranges and defaults follow Cloudflare's catalogue files
(`src/content/workers-ai-models/<model>.json` in cloudflare/cloudflare-docs); prices follow
the pricing page and the `cf-ai-neurons` figures in `workers-ai.md`. Where we enforce a tighter
bound than the catalogue (or one where it states none), the entry says so and records the
catalogue's own bound in `catalogue_bounds`, so the live check does not call our choice drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from flux_proxy.pricing import Pricing

BodyFormat = Literal["multipart", "json"]
AnswerFormat = Literal["base64_json", "raw_bytes"]

# Workers AI's per-account rate limit for the Text-to-Image task; a few models have their own.
TEXT_TO_IMAGE_RATE_LIMIT = 720
# Our own cap on prompts where Cloudflare documents none (flux-1-schnell's is 2048).
OWN_PROMPT_LIMIT = 10_000

# (parameter, minimum, maximum) as Cloudflare's catalogue states them; None: no bound stated.
# For strings the bounds are lengths (minLength, maxLength).
CatalogueBound = tuple[str, float | None, float | None]


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
    # what raw answers are documented as (the emulator draws it); every answer is typed by sniffing
    # its bytes, since the label is not always true (SDXL-lightning)
    answer_mime: str | None
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
    steps_aliases: tuple[str, ...] = ()  # other upstream names for the same value (lucid)
    guidance_range: FloatRange | None = None
    default_guidance: float | None = None  # what upstream uses when none is sent
    takes_seed: bool = True
    takes_negative_prompt: bool = False
    max_references: int = 0
    max_reference_side: int = 511  # FLUX.2 needs every input image smaller than 512x512
    # img2img / inpainting (JSON `image` and `mask`, arrays of the files' bytes):
    # references[0] is the image to change; the mask says where (white = repaint).
    takes_mask: bool = False
    strength_range: FloatRange | None = None
    default_strength: float | None = None
    requires_reference: bool = False  # img2img and inpainting make nothing from text alone
    requires_mask: bool = False
    prompt_max_chars: int = OWN_PROMPT_LIMIT
    aliases: tuple[str, ...] = field(default_factory=tuple)
    rate_limit_per_minute: int = TEXT_TO_IMAGE_RATE_LIMIT
    # phoenix-1.0 sends no `cf-ai-neurons`: then the estimate is what the ledger records.
    reports_neurons: bool = True
    catalogue_bounds: tuple[CatalogueBound, ...] = ()

    @property
    def takes_size(self) -> bool:
        return self.size_range is not None

    @property
    def takes_steps(self) -> bool:
        return self.steps_range is not None

    @property
    def takes_references(self) -> bool:
        return self.max_references > 0

    @property
    def takes_strength(self) -> bool:
        return self.strength_range is not None

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


def _stable_diffusion(
    model_id: str,
    description: str,
    typical_seconds: float,
    **overrides: object,
) -> ModelSpec:
    """The Stable Diffusion family: one catalogue schema for all five (text-to-image with
    optional `image`/`image_b64`, `mask`, `strength`), raw PNG answers, no price (beta)."""
    spec = ModelSpec(
        id=model_id,
        short_name=model_id.rsplit("/", 1)[1],
        owned_by=model_id.split("/")[1],
        description=description,
        body="json",
        answer="raw_bytes",
        answer_mime="image/png",
        # Cloudflare lists no neuron price for these (beta, "$0 per step"); the budget counts
        # cf-ai-neurons when sent.
        pricing=Pricing(),
        typical_seconds=typical_seconds,
        size_range=IntRange(256, 2048),
        default_width=1024,
        default_height=1024,
        steps_field="num_steps",
        # The catalogue gives only a maximum (20) and the default (20); at least 1 is ours.
        steps_range=IntRange(1, 20),
        default_steps=20,
        # The catalogue gives guidance (default 7.5) and strength (default 1, "a value between
        # 0 and 1") no bounds; 0-30 for guidance is ours, 0-1 for strength its description's.
        guidance_range=FloatRange(0.0, 30.0),
        default_guidance=7.5,
        takes_negative_prompt=True,
        max_references=1,
        # Sent as a JSON array of the file's bytes (3-4 characters per byte): larger images
        # are scaled to 1024 on their longer side to keep the body well below the size limit.
        max_reference_side=1024,
        takes_mask=True,
        strength_range=FloatRange(0.0, 1.0),
        default_strength=1.0,
        catalogue_bounds=(
            ("num_steps", None, 20),
            ("guidance", None, None),
            ("strength", None, None),
        ),
    )
    return replace(spec, **overrides)


MODELS: tuple[ModelSpec, ...] = (
    _FLUX2_DEV,
    _flux2_klein("4B", Pricing(per_output_tile=26.05, per_input_tile=5.37), 4.0),
    _flux2_klein(
        "9B",
        Pricing(first_megapixel=1363.64, per_extra_megapixel=181.82, per_input_megapixel=181.82),
        6.0,
    ),
    ModelSpec(
        id="@cf/black-forest-labs/flux-1-schnell",
        short_name="flux-1-schnell",
        owned_by="black-forest-labs",
        description="FLUX.1 [schnell]: JSON body, at most 8 steps, fixed 1024x1024 output.",
        body="json",
        answer="base64_json",
        answer_mime="image/jpeg",
        pricing=Pricing(per_output_tile=4.8, per_output_tile_step=9.6),
        typical_seconds=3.0,
        size_range=None,  # width/height are rejected upstream with 5006
        default_width=1024,
        default_height=1024,
        # The catalogue states only the maximum (8); its description gives the default (4).
        steps_range=IntRange(1, 8),
        default_steps=4,
        takes_seed=False,
        prompt_max_chars=2048,
        catalogue_bounds=(("steps", None, 8),),
    ),
    ModelSpec(
        id="@cf/leonardo/lucid-origin",
        short_name="lucid-origin",
        owned_by="leonardo",
        description="Leonardo Lucid Origin: JSON body, sizes up to 2500.",
        body="json",
        answer="base64_json",
        answer_mime=None,
        pricing=Pricing(per_output_tile=636, per_output_tile_step=12),
        typical_seconds=10.0,
        # The catalogue allows 0-2500; below 256 is ours (no useful image is that small).
        size_range=IntRange(256, 2500),
        default_width=1120,
        default_height=1120,
        # `steps` and `num_steps` are both in the catalogue (1-40, no default stated). 15 is
        # what Cloudflare runs when none is sent: the observed 3,904.69 neurons for 1120x1120
        # fit 636/tile + 12/tile/step at exactly 15 steps.
        steps_range=IntRange(1, 40),
        default_steps=15,
        steps_aliases=("num_steps",),
        guidance_range=FloatRange(0.0, 10.0),
        default_guidance=4.5,
        catalogue_bounds=(("width", 0, 2500), ("height", 0, 2500), ("seed", 0, None)),
    ),
    ModelSpec(
        id="@cf/leonardo/phoenix-1.0",
        short_name="phoenix-1.0",
        owned_by="leonardo",
        description="Leonardo Phoenix 1.0: JSON body, answers raw JPEG bytes.",
        body="json",
        answer="raw_bytes",
        answer_mime="image/jpeg",
        pricing=Pricing(per_output_tile=530, per_output_tile_step=10),
        typical_seconds=10.0,
        # The catalogue allows 0-2048; below 256 is ours.
        size_range=IntRange(256, 2048),
        default_width=1024,
        default_height=1024,
        steps_field="num_steps",
        steps_range=IntRange(1, 50),
        default_steps=25,
        guidance_range=FloatRange(2.0, 10.0),
        default_guidance=2.0,
        takes_negative_prompt=True,
        reports_neurons=False,  # observed: no cf-ai-neurons, so the estimate is the bill
        catalogue_bounds=(
            ("width", 0, 2048),
            ("height", 0, 2048),
            ("seed", 0, None),
            ("negative_prompt", 1, None),
        ),
    ),
    _stable_diffusion(
        "@cf/stabilityai/stable-diffusion-xl-base-1.0",
        "Stable Diffusion XL base 1.0: answers raw PNG bytes; img2img and masks.",
        8.0,
    ),
    _stable_diffusion(
        "@cf/bytedance/stable-diffusion-xl-lightning",
        # Observed sending JPEG bytes labelled image/png: the client trusts the bytes.
        "SDXL Lightning: few-step SDXL, answers raw image bytes; img2img and masks.",
        3.0,
    ),
    _stable_diffusion(
        "@cf/lykon/dreamshaper-8-lcm",
        "DreamShaper 8 LCM: answers raw PNG bytes; img2img and masks.",
        3.0,
    ),
    _stable_diffusion(
        "@cf/runwayml/stable-diffusion-v1-5-img2img",
        "Stable Diffusion 1.5 img2img: changes the image it is given (strength 0-1).",
        5.0,
        requires_reference=True,
        rate_limit_per_minute=1500,  # its own limit on Cloudflare's limits page
    ),
    _stable_diffusion(
        "@cf/runwayml/stable-diffusion-v1-5-inpainting",
        "Stable Diffusion 1.5 inpainting: repaints where the mask is white.",
        5.0,
        requires_reference=True,
        requires_mask=True,
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
