"""The seed project's interface over raw HTTP, as its README's curl examples use it, plus the
seed's `/health` and `/v1/models` fields."""

from __future__ import annotations

import base64
import io
import json

import httpx
from PIL import Image


def picture(width: int, height: int, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(out, format=fmt)
    return out.getvalue()


def image_of(body: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))


def test_curl_json_with_steps_width_and_height(proxy, emulator):
    # curl .../v1/images/generations -H "Authorization: ..." -H "Content-Type: ..." -d "{...}"
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        json={
            "prompt": "A serene Japanese garden with cherry blossoms",
            "steps": 25,
            "width": 1024,
            "height": 1024,
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "image.generation"
    assert body["model"] == "@cf/black-forest-labs/flux-2-dev"
    assert body["account_used"] == 1
    assert isinstance(body["created"], int)
    assert body["data"][0]["prompt"] == "A serene Japanese garden with cherry blossoms"
    assert image_of(body).size == (1024, 1024)
    (call,) = emulator.calls()
    assert {k: call["fields"][k] for k in ("steps", "width", "height")} == {
        "steps": "25",
        "width": "1024",
        "height": "1024",
    }


def test_json_object_prompt_arrives_upstream_as_its_json_text(proxy, emulator):
    prompt = {
        "scene": "futuristic city",
        "subjects": [{"type": "robot", "pose": "standing", "expression": "friendly"}],
        "style": "cyberpunk digital art",
        "color_palette": ["#00FFFF", "#FF00FF", "#1A1A2E"],
    }
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        json={"prompt": prompt, "width": 512, "height": 512},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (call,) = emulator.calls()
    sent = call["fields"]["prompt"]
    assert isinstance(sent, str)
    assert json.loads(sent) == prompt


def test_curl_multipart_with_input_image_0(proxy, emulator):
    # curl ... -F "prompt=..." -F "input_image_0=@reference.jpg" -F "steps=30" -F "width=1024" ...
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        data={
            "prompt": "A cyberpunk portrait of the person in the image",
            "steps": "30",
            "width": "1024",
            "height": "1024",
        },
        files={"input_image_0": ("reference.jpg", picture(300, 400), "image/jpeg")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert image_of(response.json()).size == (1024, 1024)
    (call,) = emulator.calls()
    assert call["fields"]["steps"] == "30"
    assert call["files"]["input_image_0"]["mime"] == "image/jpeg"
    assert (call["files"]["input_image_0"]["width"], call["files"]["input_image_0"]["height"]) == (
        300,
        400,
    )


def test_curl_multipart_with_three_references_for_consistency(proxy, emulator):
    files = {
        "input_image_0": ("character_front.jpg", picture(800, 1200), "image/jpeg"),
        "input_image_1": ("character_side.jpg", picture(400, 400), "image/jpeg"),
        "input_image_2": ("character_back.jpg", picture(1200, 800), "image/jpeg"),
    }
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        data={
            "prompt": "The character in different poses: standing, sitting, running",
            "steps": "35",
            "width": "1536",
            "height": "1024",
        },
        files=files,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert image_of(response.json()).size == (1536, 1024)
    (call,) = emulator.calls()
    sizes = [
        (call["files"][f"input_image_{i}"]["width"], call["files"][f"input_image_{i}"]["height"])
        for i in range(3)
    ]
    assert sizes[1] == (400, 400)
    assert all(w < 512 and h < 512 for w, h in sizes)
    assert sizes[0][1] == 511 and sizes[2][0] == 511  # long side scaled, aspect kept


def test_images_as_data_urls(proxy, emulator):
    urls = [
        "data:image/png;base64," + base64.b64encode(picture(64, 64, "PNG")).decode(),
        "data:image/jpeg;base64," + base64.b64encode(picture(32, 48)).decode(),
    ]
    response = httpx.post(
        proxy.base_url + "/images/generations",
        headers=proxy.auth,
        json={"prompt": "image 0 wearing the hat in image 1", "images": urls, "width": 512},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (call,) = emulator.calls()
    assert [call["files"][f"input_image_{i}"]["mime"] for i in range(2)] == [
        "image/png",
        "image/jpeg",
    ]


def test_health_has_the_seeds_fields_and_account_states_without_secrets(proxy, emulator):
    # Without a key: the seed's fields and a summary, no per-account detail.
    response = httpx.get(proxy.url + "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["mode"] == "cloudflare"
    assert body["model"] == "@cf/black-forest-labs/flux-2-dev"
    assert body["total_accounts"] == 3
    assert body["accounts_configured"] == ["Account 1", "Account 2", "Account 3"]
    assert body["counts"] == {"available": 3, "cooling": 0, "parked": 0, "disabled": 0}
    assert "accounts" not in body
    assert body["store"] == {"backend": "memory", "ok": True}
    assert isinstance(body["version"], str)
    # With the admin key: each account's state as well.
    detailed = httpx.get(proxy.url + "/health", headers=proxy.auth)
    assert [a["state"] for a in detailed.json()["accounts"]] == ["available"] * 3
    for answer in (response, detailed):
        for _, account_id, token in emulator.accounts:
            assert account_id not in answer.text
            assert token not in answer.text
        assert proxy.key not in answer.text


def test_liveness_readiness_and_metrics(proxy):
    assert httpx.get(proxy.url + "/health/live").status_code == 200
    ready = httpx.get(proxy.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = httpx.get(proxy.url + "/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "flux_proxy_http_requests" in metrics.text


def test_health_is_503_with_no_accounts(make_proxy):
    proxy = make_proxy(accounts=[])
    response = httpx.get(proxy.url + "/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "CF_API_TOKEN_1" in body["reason"]
    assert httpx.get(proxy.url + "/health/ready").status_code == 503
    assert httpx.get(proxy.url + "/health/live").status_code == 200


def test_models_list_has_created_in_seconds(proxy):
    body = httpx.get(proxy.base_url + "/models", headers=proxy.auth).json()
    assert body["object"] == "list"
    for model in body["data"]:
        assert model["object"] == "model"
        assert model["created"] < 10**10  # seconds, not milliseconds (the seed's fault)


def test_web_page_is_served_without_the_key_in_it(proxy):
    page = httpx.get(proxy.url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert proxy.key not in page.text  # the seed wrote its master key into the page
    assert httpx.get(proxy.url + "/static/style.css").status_code == 200
    missing = httpx.get(proxy.url + "/static/no-such-file.js")
    assert missing.status_code == 404 and "error" in missing.json()
