"""Every model's neuron estimate, against Cloudflare's published prices and the `cf-ai-neurons`
figures observed in real answers (workers-ai.md, "Money and limits"). The estimate is what the
budget decides on, and for phoenix-1.0 (which sends no `cf-ai-neurons`) what the ledger
records, so these numbers are money."""

from __future__ import annotations

import pytest

from flux_proxy.job import ImageJob, ReferenceImage
from flux_proxy.models import MODELS, find_model

REF_511 = (511, 511)

# (model, width, height, steps, input image sizes, neurons, where the figure comes from)
CASES = [
    ("flux-2-dev", None, None, None, (), 2812.50, "3 tiles x 37.5 x 25 steps"),
    ("flux-2-dev", 1024, 1024, 25, (), 3750.00, "4 x 37.5 x 25 (workers-ai.md)"),
    ("flux-2-dev", 1024, 1024, 25, ((256, 256),), 3867.19, "+ 0.25 input tile x 18.75 x 25"),
    ("flux-2-klein-4b", None, None, None, (), 78.15, "3 tiles x 26.05"),
    ("flux-2-klein-4b", 512, 512, None, (REF_511,), 31.40, "26.05 + 0.996 tile x 5.37"),
    ("flux-2-klein-9b", 1024, 1024, None, (), 1363.64, "observed exactly: first MP is 1024^2"),
    ("flux-2-klein-9b", None, None, None, (), 1363.64, "1024x768 is within the first MP"),
    ("flux-2-klein-9b", 1920, 1080, None, (), 1545.46, "2 started MP of output"),
    ("flux-2-klein-9b", 1024, 1024, None, (REF_511,), 1545.46, "+ 1 input MP, priced apart"),
    ("flux-2-klein-9b", 1024, 1024, None, (REF_511,) * 4, 1545.46, "4 x 511^2 < 1 input MP"),
    ("flux-1-schnell", None, None, None, (), 172.80, "observed: 4.8x4 + 9.6x4 tiles x4 steps"),
    ("flux-1-schnell", None, None, 8, (), 326.40, "4.8x4 + 9.6x4x8"),
    ("lucid-origin", None, None, None, (), 3904.69, "observed at 1120x1120, its default"),
    ("lucid-origin", 1024, 1024, 20, (), 3504.00, "636x4 + 12x4x20"),
    ("phoenix-1.0", None, None, None, (), 3120.00, "observed: 530x4 + 10x4x25"),
    ("phoenix-1.0", 512, 512, 10, (), 630.00, "530 + 10x10"),
]


@pytest.mark.parametrize(
    ("model", "width", "height", "steps", "refs", "neurons", "source"),
    CASES,
    ids=[f"{c[0]}-{c[6]}" for c in CASES],
)
def test_estimate_matches_cloudflares_price(model, width, height, steps, refs, neurons, source):
    spec = find_model(model)
    assert spec is not None
    assert spec.estimate_neurons(width, height, steps, refs) == pytest.approx(neurons, abs=0.005)


STABLE_DIFFUSION = [
    "stable-diffusion-xl-base-1.0",
    "stable-diffusion-xl-lightning",
    "dreamshaper-8-lcm",
    "stable-diffusion-v1-5-img2img",
    "stable-diffusion-v1-5-inpainting",
]


@pytest.mark.parametrize("name", STABLE_DIFFUSION)
def test_stable_diffusion_models_are_priced_at_zero_as_the_catalogue_lists_them(name):
    spec = find_model(name)
    assert spec.estimate_neurons(None, None, None) == 0.0
    assert spec.estimate_neurons(2048, 2048, 20, ((1024, 1024),)) == 0.0


def test_every_model_has_a_price_case():
    assert {spec.short_name for spec in MODELS} == {c[0] for c in CASES} | set(STABLE_DIFFUSION)


def test_a_job_estimates_with_its_references_sizes():
    spec = find_model("flux-2-klein-9b")
    reference = ReferenceImage(data=b"", mime="image/png", width=511, height=511)
    job = ImageJob(model=spec, prompt="x", width=1024, height=1024, references=(reference,))
    assert job.estimated_neurons() == pytest.approx(1545.46)


def test_phoenix_is_the_model_whose_estimate_is_the_bill():
    assert [spec.short_name for spec in MODELS if not spec.reports_neurons] == ["phoenix-1.0"]
