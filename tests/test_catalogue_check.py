"""`flux-proxy models --check` as a real subprocess against the emulator's catalogue endpoints
(generated from the model table): no drift is exit 0; a model removed, one added, and a
parameter's range, default or type changed are each printed and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from procs import clean_env

from flux_proxy.catalogue_check import compare_schema
from flux_proxy.models import MODELS, find_model
from flux_proxy.upstream.catalogue import model_schema

PHOENIX = "@cf/leonardo/phoenix-1.0"
INPAINTING = "@cf/runwayml/stable-diffusion-v1-5-inpainting"
SCHNELL = "@cf/black-forest-labs/flux-1-schnell"


def models_check(emulator, tmp_path: Path, tokens: dict[int, str] | None = None):
    """Run `python -m flux_proxy models --check` with the emulator's accounts."""
    env = clean_env(CF_API_BASE_URL=emulator.base_url, STATE_BACKEND="memory")
    for number, account_id, token in emulator.accounts:
        env[f"ACCOUNT_{number}"] = account_id
        env[f"CF_API_TOKEN_{number}"] = (tokens or {}).get(number, token)
    return subprocess.run(
        [sys.executable, "-m", "flux_proxy", "models", "--check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def drift(emulator, **body) -> dict:
    response = httpx.post(f"{emulator.root}/__emulator/catalogue", json=body, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def model_runs(emulator) -> list[dict]:
    return emulator.calls()


def test_no_drift_exits_0_and_spends_nothing(emulator, tmp_path):
    result = models_check(emulator, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No drift" in result.stdout
    for spec in MODELS:
        assert f"ok       {spec.id}" in result.stdout
    assert f"{len(MODELS)} models listed" in result.stdout
    assert model_runs(emulator) == []  # only the free endpoints: no /ai/run, no neurons


def test_injected_drift_is_printed_per_model_and_exits_1(emulator, tmp_path):
    drift(
        emulator,
        remove=[INPAINTING],
        add=[{"name": "@cf/black-forest-labs/flux-3-pro"}],
        change=[
            {"model": PHOENIX, "parameter": "num_steps", "set": {"maximum": 60, "default": 30}},
            {"model": PHOENIX, "parameter": "guidance", "set": {"type": "integer"}},
            {"model": SCHNELL, "parameter": "prompt", "set": {"maxLength": 4096}},
        ],
    )
    result = models_check(emulator, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert f"GONE     {INPAINTING}: in the table, no longer listed by Cloudflare" in out
    assert "NEW      @cf/black-forest-labs/flux-3-pro: listed by Cloudflare, missing here" in out
    assert f"CHANGED  {PHOENIX}" in out
    assert "num_steps: maximum 50 here, 60 at Cloudflare" in out
    assert "num_steps: default 25 here, 30 at Cloudflare" in out
    assert "guidance: type number here, integer at Cloudflare" in out
    assert f"CHANGED  {SCHNELL}" in out
    assert "prompt: maxLength 2048 here, 4096 at Cloudflare" in out
    assert "Drift: 4 model(s)" in out
    assert "flux_proxy/models.py" in out  # what to do about it


def test_a_parameter_added_or_dropped_upstream_is_drift(emulator, tmp_path):
    drift(
        emulator,
        change=[
            {"model": PHOENIX, "parameter": "style", "set": {"type": "string"}},
            {"model": INPAINTING, "parameter": "mask", "remove": True},
        ],
    )
    result = models_check(emulator, tmp_path)
    assert result.returncode == 1
    assert "style: a parameter at Cloudflare (string), unknown here" in result.stdout
    assert "mask: sent from here, but gone from Cloudflare's schema" in result.stdout


def test_the_first_account_whose_token_works_is_used(emulator, tmp_path):
    result = models_check(emulator, tmp_path, tokens={1: "not-a-valid-token"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked with account 2" in result.stdout
    assert "not-a-valid-token" not in result.stdout + result.stderr
    for _, _, token in emulator.accounts:
        assert token not in result.stdout + result.stderr


def test_no_working_token_cannot_check_and_exits_2(emulator, tmp_path):
    bad = {number: f"bad-{number}" for number, _, _ in emulator.accounts}
    result = models_check(emulator, tmp_path, tokens=bad)
    assert result.returncode == 2
    assert "No account's token works" in result.stdout


def test_an_unreachable_cloudflare_is_said_as_such_not_as_bad_tokens(emulator, tmp_path):
    # Before: "No account's token works", for a wrong CF_API_BASE_URL or no network.
    env = clean_env(CF_API_BASE_URL="http://127.0.0.1:9/client/v4", STATE_BACKEND="memory")
    for number, account_id, token in emulator.accounts:
        env[f"ACCOUNT_{number}"], env[f"CF_API_TOKEN_{number}"] = account_id, token
    result = subprocess.run(
        [sys.executable, "-m", "flux_proxy", "models", "--check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "could not be reached at http://127.0.0.1:9/client/v4" in result.stdout
    assert "token works" not in result.stdout


def test_drift_control_is_cleared_by_the_emulators_reset(emulator):
    drift(emulator, remove=[PHOENIX])
    emulator.reset()
    state = httpx.get(f"{emulator.root}/__emulator/catalogue", timeout=10).json()
    assert state == {"removed": [], "added": [], "changed": []}


# --- the emulator's endpoints in Cloudflare's shape ------------------------------------------


def test_search_pages_like_cloudflare_and_filters_by_task(emulator):
    account_id, token = emulator.accounts[0][1], emulator.accounts[0][2]
    url = f"{emulator.base_url}/accounts/{account_id}/ai/models/search"
    headers = {"Authorization": f"Bearer {token}"}
    names = []
    for page in (1, 2, 3):
        params = {"task": "Text-to-Image", "per_page": 4, "page": page}
        body = httpx.get(url, params=params, headers=headers, timeout=10).json()
        assert body["success"] is True and body["errors"] == []
        assert body["result_info"]["total_count"] == len(MODELS)
        for entry in body["result"]:
            assert entry["task"]["name"] == "Text-to-Image"
            assert set(entry) >= {"id", "name", "description", "task", "properties", "tags"}
        names += [entry["name"] for entry in body["result"]]
    assert names == [spec.id for spec in MODELS]
    other = httpx.get(url, params={"task": "Translation"}, headers=headers, timeout=10).json()
    assert other["result"] == []
    denied = httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert denied.status_code == 401 and denied.json()["errors"][0]["code"] == 10000


def test_schema_endpoint_answers_the_catalogue_files_shape(emulator):
    account_id, token = emulator.accounts[0][1], emulator.accounts[0][2]
    url = f"{emulator.base_url}/accounts/{account_id}/ai/models/schema"
    headers = {"Authorization": f"Bearer {token}"}
    body = httpx.get(url, params={"model": INPAINTING}, headers=headers, timeout=10).json()
    inputs = body["result"]["input"]["properties"]
    # As stable-diffusion-v1-5-inpainting.json in cloudflare-docs declares them.
    assert inputs["num_steps"] == {"type": "integer", "maximum": 20, "default": 20}
    assert inputs["strength"] == {"type": "number", "default": 1.0}
    assert inputs["guidance"] == {"type": "number", "default": 7.5}
    assert inputs["image"]["type"] == inputs["mask"]["type"] == "array"
    assert inputs["image_b64"] == {"type": "string"}
    assert inputs["width"]["minimum"] == 256 and inputs["width"]["maximum"] == 2048
    assert body["result"]["output"] == {
        "type": "string",
        "contentType": "image/png",
        "format": "binary",
    }
    missing = httpx.get(url, params={"model": "@cf/no/such"}, headers=headers, timeout=10)
    assert missing.status_code == 400 and missing.json()["errors"][0]["code"] == 5007


# --- the comparison, on Cloudflare's own published schemas -----------------------------------


LUCID_CATALOGUE_FILE = {  # src/content/workers-ai-models/lucid-origin.json, schema.input
    "input": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "guidance": {"type": "number", "default": 4.5, "minimum": 0, "maximum": 10},
            "seed": {"type": "integer", "minimum": 0},
            "height": {"type": "integer", "minimum": 0, "maximum": 2500, "default": 1120},
            "width": {"type": "integer", "minimum": 0, "maximum": 2500, "default": 1120},
            "num_steps": {"type": "integer", "minimum": 1, "maximum": 40},
            "steps": {"type": "integer", "minimum": 1, "maximum": 40},
        },
        "required": ["prompt"],
    },
    "output": {"type": "object", "contentType": "application/json"},
}
FLUX2_DEV_CATALOGUE_FILE = {  # flux-2-dev.json: a stray "required" among the properties
    "input": {
        "type": "object",
        "properties": {
            "multipart": {
                "type": "object",
                "properties": {"body": {"type": "object"}, "contentType": {"type": "string"}},
                "required": ["body", "contentType"],
            },
            "required": ["multipart"],
        },
    },
    "output": {"type": "object", "properties": {"image": {"type": "string"}}},
}


PHOENIX_CATALOGUE_FILE = {  # phoenix-1.0.json
    "input": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "guidance": {"type": "number", "default": 2, "minimum": 2, "maximum": 10},
            "seed": {"type": "integer", "minimum": 0},
            "height": {"type": "integer", "minimum": 0, "maximum": 2048, "default": 1024},
            "width": {"type": "integer", "minimum": 0, "maximum": 2048, "default": 1024},
            "num_steps": {"type": "integer", "default": 25, "minimum": 1, "maximum": 50},
            "negative_prompt": {"type": "string", "minLength": 1},
        },
        "required": ["prompt"],
    },
    "output": {"type": "string", "contentType": "image/jpeg", "format": "binary"},
}
SCHNELL_CATALOGUE_FILE = {  # flux-1-schnell.json
    "input": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 2048},
            "steps": {"type": "integer", "maximum": 8},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    },
    "output": {"type": "object", "contentType": "application/json"},
}
_BYTES = {"type": "array", "items": {"type": "number"}}
STABLE_DIFFUSION_CATALOGUE_FILE = {  # the five SD files share this input schema
    "input": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1},
            "negative_prompt": {"type": "string"},
            "height": {"type": "integer", "minimum": 256, "maximum": 2048},
            "width": {"type": "integer", "minimum": 256, "maximum": 2048},
            "image": _BYTES,
            "image_b64": {"type": "string"},
            "mask": _BYTES,
            "num_steps": {"type": "integer", "default": 20, "maximum": 20},
            "strength": {"type": "number", "default": 1},
            "guidance": {"type": "number", "default": 7.5},
            "seed": {"type": "integer"},
        },
        "required": ["prompt"],
    },
    "output": {"type": "string", "contentType": "image/png", "format": "binary"},
}
SD_MODELS = [
    "stable-diffusion-xl-base-1.0",
    "stable-diffusion-xl-lightning",
    "dreamshaper-8-lcm",
    "stable-diffusion-v1-5-img2img",
    "stable-diffusion-v1-5-inpainting",
]


@pytest.mark.parametrize(
    ("model", "published"),
    [
        ("lucid-origin", LUCID_CATALOGUE_FILE),
        ("flux-2-dev", FLUX2_DEV_CATALOGUE_FILE),
        ("phoenix-1.0", PHOENIX_CATALOGUE_FILE),
        ("flux-1-schnell", SCHNELL_CATALOGUE_FILE),
        *((name, STABLE_DIFFUSION_CATALOGUE_FILE) for name in SD_MODELS),
    ],
)
def test_the_table_matches_cloudflares_published_schema(model, published):
    assert compare_schema(find_model(model), published) == []


def test_our_tighter_bounds_are_declared_not_reported():
    # lucid: we refuse sizes below 256 where Cloudflare allows 0; the table says so.
    spec = find_model("lucid-origin")
    assert spec.size_range.minimum == 256
    assert model_schema(spec)["input"]["properties"]["width"]["minimum"] == 0


def test_a_default_cloudflare_does_not_state_is_not_drift_but_a_changed_one_is():
    spec = find_model("lucid-origin")  # our 15 steps come from observed billing
    published = model_schema(spec)
    del published["input"]["properties"]["steps"]["default"]
    assert compare_schema(spec, published) == []
    published["input"]["properties"]["guidance"]["default"] = 5
    assert compare_schema(spec, published) == ["guidance: default 4.5 here, 5 at Cloudflare"]


def test_a_changed_answer_type_is_drift():
    spec = find_model("phoenix-1.0")
    published = model_schema(spec)
    published["output"]["contentType"] = "image/png"
    assert compare_schema(spec, published) == [
        "answer contentType: image/jpeg here, image/png at Cloudflare"
    ]
