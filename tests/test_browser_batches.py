"""The page's Batches view in headless Chromium, against a real proxy, its batch runner and
the emulator: prompts or a JSONL file in, the estimate, progress, cancel, JSONL and zip out."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile

import browser_helpers
import httpx
import pytest
from browser_helpers import needs_chromium, open_view
from PIL import Image

pytestmark = needs_chromium
browser, page = browser_helpers.browser, browser_helpers.page  # the fixtures
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
expect = sync_api.expect
expect.set_options(timeout=15_000)

FAST_RUNNER = {"batch_poll_seconds": 0.2}


def watch_card(page, deadline: float = 60.0) -> list[tuple[str, int, int]]:
    """(status, done, total) of the first batch card each time it changes, until it ends."""
    seen: list[tuple[str, int, int]] = []
    card = page.locator(".batch-card").first
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        status = card.get_attribute("data-status")
        bar = card.locator(".batch-track")
        now = (
            status,
            int(bar.get_attribute("aria-valuenow")),
            int(bar.get_attribute("aria-valuemax")),
        )
        if not seen or seen[-1] != now:
            seen.append(now)
        if status in ("completed", "failed", "expired", "cancelled"):
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"the batch did not end in time: {seen}")


def input_lines(proxy) -> list[dict]:
    batch = httpx.get(f"{proxy.base_url}/batches", headers=proxy.auth).json()["data"][0]
    content = httpx.get(
        f"{proxy.base_url}/files/{batch['input_file_id']}/content", headers=proxy.auth
    )
    return [json.loads(line) for line in content.text.splitlines() if line.strip()]


def test_pasted_prompts_show_an_estimate_run_with_progress_and_download_as_zip_and_jsonl(
    page, make_proxy, emulator
):
    proxy = make_proxy(account_concurrency=1, **FAST_RUNNER)  # 3 lines at a time, 2 rounds
    emulator_config = {"latency": 1.5}  # two rounds: longer than one 2 s poll of the page
    httpx.post(f"{emulator.root}/__emulator/config", json=emulator_config).raise_for_status()
    open_view(page, proxy.url, proxy.key, "batches")
    expect(page.locator("#batch-submit")).to_be_disabled()
    prompts = [
        "a red bicycle",
        "",
        "a lighthouse at dusk",
        "a fox in snow",
        "a tea cup",
        "moss",
        "a kite",
    ]
    page.fill("#batch-prompts", "\n".join(prompts))
    page.select_option("#batch-size", "512x512")
    page.fill("#batch-steps", "8")
    page.locator("#batch-steps").dispatch_event("change")
    expect(page.locator("#batch-line-count")).to_have_text("6 images")
    expect(page.locator("#batch-estimate")).to_have_text(
        re.compile(r"^≈ [\d,.]+ neurons: at today's budgets it fits in today$")
    )

    page.click("#batch-submit")
    expect(page.locator(".batch-card")).to_have_count(1)
    expect(page.locator("#batch-prompts")).to_have_value("")  # the form is ready for the next
    seen = watch_card(page)

    assert seen[-1] == ("completed", 6, 6), seen
    assert any(status == "in_progress" for status, _, _ in seen), seen
    assert [done for _, done, _ in seen] == sorted(done for _, done, _ in seen)  # never back
    card = page.locator(".batch-card").first
    expect(card.locator(".batch-count-text")).to_have_text("6 of 6 done")
    expect(card.locator(".batch-when")).to_contain_text("completed")
    assert len(emulator.calls()) == 6  # one upstream call per line

    lines = input_lines(proxy)
    assert [line["custom_id"] for line in lines] == ["0001", "0003", "0004", "0005", "0006", "0007"]
    assert lines[1]["body"] == {
        "prompt": "a lighthouse at dusk",
        "model": "@cf/black-forest-labs/flux-2-dev",
        "size": "512x512",
        "steps": 8,
    }

    with page.expect_download() as download:
        card.locator(".batch-download-zip").click()
    archive = zipfile.ZipFile(io.BytesIO(download.value.path().read_bytes()))
    assert archive.testzip() is None  # every CRC checks out
    assert archive.namelist() == [f"{line['custom_id']}.png" for line in lines]
    for name in archive.namelist():
        image = Image.open(io.BytesIO(archive.read(name)))
        assert image.size == (512, 512)
    assert download.value.suggested_filename.endswith("-images.zip")

    with page.expect_download() as download:
        card.locator(".batch-download-jsonl").click()
    output = [json.loads(row) for row in download.value.path().read_text().splitlines()]
    assert sorted(row["custom_id"] for row in output) == [line["custom_id"] for line in lines]
    assert all(row["response"]["status_code"] == 200 for row in output)


def test_a_running_batch_can_be_cancelled_and_stops_taking_lines(page, make_proxy, emulator):
    proxy = make_proxy(account_concurrency=1, **FAST_RUNNER)
    httpx.post(f"{emulator.root}/__emulator/config", json={"latency": 2.0}).raise_for_status()
    open_view(page, proxy.url, proxy.key, "batches")
    page.fill("#batch-prompts", "\n".join(f"picture {n}" for n in range(12)))
    page.click("#batch-submit")
    card = page.locator(".batch-card").first
    expect(card).to_have_attribute("data-status", "in_progress")
    card.locator(".batch-cancel").click()
    expect(card).to_have_attribute("data-status", re.compile("^cancell(ing|ed)$"))
    expect(card.locator(".batch-cancel")).to_have_count(0)
    expect(card).to_have_attribute("data-status", "cancelled", timeout=30_000)
    assert len(emulator.calls()) < 12


def test_a_dropped_jsonl_file_is_sent_as_it_is_and_a_broken_one_is_refused(
    page, make_proxy, emulator
):
    proxy = make_proxy(**FAST_RUNNER)
    open_view(page, proxy.url, proxy.key, "batches")
    drop = """
    ({name, text}) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([text], name, {type: "application/jsonl"}));
      const target = document.querySelector("#batch-drop");
      for (const type of ["dragenter", "dragover", "drop"]) {
        const init = {bubbles: true, cancelable: true, dataTransfer: transfer};
        target.dispatchEvent(new DragEvent(type, init));
      }
    }
    """
    page.evaluate(drop, {"name": "broken.jsonl", "text": '{"custom_id": "a"}\n{not json}\n'})
    expect(page.locator("#batch-input-error")).to_have_text(
        "broken.jsonl: Line 1: url must be /v1/images/generations or /v1/images/edits."
    )
    page.evaluate(
        drop,
        {
            "name": "broken.jsonl",
            "text": '{"custom_id": "a", "url": "/v1/images/generations", "body": {}}\n{not json}\n',
        },
    )
    expect(page.locator("#batch-input-error")).to_have_text("broken.jsonl: Line 2 is not JSON.")

    lines = [
        {
            "custom_id": "castle",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": "a castle", "size": "256x256", "response_format": "b64_json"},
        },
        {
            "custom_id": "river",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": "a river", "size": "320x256"},
        },
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    page.evaluate(drop, {"name": "shots.jsonl", "text": text})
    expect(page.locator("#batch-file-name")).to_have_text("shots.jsonl · 2 lines")
    expect(page.locator("#batch-input-error")).to_be_hidden()
    expect(page.locator("#batch-prompts")).to_be_disabled()
    expect(page.locator("#batch-estimate")).to_contain_text("neurons")
    page.click("#batch-submit")
    card = page.locator(".batch-card").first
    expect(card).to_have_attribute("data-status", "completed", timeout=30_000)
    assert input_lines(proxy) == lines  # exactly the file's lines

    with page.expect_download() as download:
        card.locator(".batch-download-zip").click()
    archive = zipfile.ZipFile(io.BytesIO(download.value.path().read_bytes()))
    sizes = {name: Image.open(io.BytesIO(archive.read(name))).size for name in archive.namelist()}
    assert sizes == {"castle.png": (256, 256), "river.png": (320, 256)}  # b64 and URL lines


def test_a_batch_the_proxy_refuses_shows_its_reason_as_text(page, make_proxy, emulator):
    proxy = make_proxy(**FAST_RUNNER)
    open_view(page, proxy.url, proxy.key, "batches")
    page.fill("#batch-prompts", "<img src=x onerror='window.pwned=1'> a harbour")
    page.select_option("#batch-window", "7d")
    page.route(
        "**/v1/batches",
        lambda route: (
            route.fulfill(
                status=400,
                content_type="application/json",
                body=json.dumps(
                    {
                        "error": {
                            "message": "<b>no</b> such window",
                            "type": "invalid_request_error",
                            "param": "completion_window",
                            "code": None,
                        }
                    }
                ),
            )
            if route.request.method == "POST"
            else route.continue_()
        ),
    )
    page.click("#batch-submit")
    expect(page.locator("#batch-input-error")).to_have_text(
        "The request was refused (400): <b>no</b> such window"
    )
    assert page.locator("main b").count() == 0
    assert page.evaluate("window.pwned") is None
    assert emulator.calls() == []


def test_another_key_entered_in_the_page_sees_only_its_own_batches_and_usage(
    page, make_proxy, tmp_path, emulator
):
    user_key = "fpx-erin-" + "e" * 30
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(user_key.encode()).hexdigest()
    keys.write_text(f'[[keys]]\nname = "erin"\nkey_sha256 = "{digest}"\nrole = "user"\n')
    proxy = make_proxy(api_keys_file=keys, **FAST_RUNNER)
    open_view(page, proxy.url, proxy.key, "batches")
    page.fill("#batch-prompts", "the admin's private lighthouse")
    expect(page.locator("#batch-submit")).to_be_enabled()
    page.click("#batch-submit")
    expect(page.locator(".batch-card")).to_have_count(1)
    page.click("a[data-view='usage']")
    expect(page.locator("#usage-accounts")).to_be_visible()

    page.click("#key-button")  # the same browser, now with erin's key
    page.fill("#key-input", user_key)
    page.click("#key-save")
    expect(page.locator("#usage-quota .quota-name")).to_have_text("erin")
    expect(page.locator("#usage-accounts")).to_be_hidden()
    page.click("a[data-view='batches']")
    expect(page.locator("#batch-empty")).to_be_visible()
    expect(page.locator(".batch-card")).to_have_count(0)
    expect(page.locator("#view-batches")).not_to_contain_text("private lighthouse")
    assert (
        httpx.get(
            f"{proxy.base_url}/batches", headers={"Authorization": f"Bearer {user_key}"}
        ).json()["data"]
        == []
    )  # the server never listed it to her: the page kept it


def test_forgetting_the_key_takes_its_batches_off_the_page(page, make_proxy, emulator):
    proxy = make_proxy(**FAST_RUNNER)
    open_view(page, proxy.url, proxy.key, "batches")
    page.fill("#batch-prompts", "a lighthouse only the key's holder should see")
    expect(page.locator("#batch-submit")).to_be_enabled()
    page.click("#batch-submit")
    expect(page.locator(".batch-card")).to_have_count(1)
    page.click("#key-button")
    page.click("#key-forget")
    expect(page.locator(".batch-card")).to_have_count(0)


def test_lines_the_estimate_refuses_are_named_and_not_submitted(
    page, make_proxy, tmp_path, emulator
):
    user_key = "fpx-finn-" + "f" * 30
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(user_key.encode()).hexdigest()
    keys.write_text(
        f'[[keys]]\nname = "finn"\nkey_sha256 = "{digest}"\nrole = "user"\n'
        'models = ["flux-1-schnell"]\n'
    )
    proxy = make_proxy(api_keys_file=keys, max_prompt_chars=60, **FAST_RUNNER)
    open_view(page, proxy.url, user_key, "batches")
    # Pasted prompts: the third line (after a blank one) is longer than the proxy takes.
    page.fill("#batch-prompts", "a short one\n\n" + "a much longer prompt " * 5)
    estimate = page.locator("#batch-estimate")
    expect(estimate).to_contain_text("No estimate (line 3)")
    expect(page.locator("#batch-submit")).to_be_disabled()
    expect(page.locator("#batch-why")).to_contain_text("fix line 3 first")
    page.fill("#batch-prompts", "a short one\n\nanother short one")
    expect(estimate).to_contain_text("neurons:")
    expect(page.locator("#batch-submit")).to_be_enabled()

    # A file: its line is named by custom_id, here asking for a model finn may not use.
    lines = [
        {"custom_id": cid, "method": "POST", "url": "/v1/images/generations", "body": body}
        for cid, body in [
            ("ok", {"prompt": "a cat", "model": "flux-1-schnell"}),
            ("dev", {"prompt": "a dog", "model": "flux-2-dev"}),
        ]
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    page.set_input_files(
        "#batch-file",
        files=[{"name": "two.jsonl", "mimeType": "text/plain", "buffer": text.encode()}],
    )
    expect(estimate).to_contain_text('No estimate (the line with custom_id "dev")')
    expect(estimate).to_contain_text("flux-2-dev")
    expect(page.locator("#batch-submit")).to_be_disabled()
    assert (
        httpx.get(
            f"{proxy.base_url}/batches", headers={"Authorization": f"Bearer {user_key}"}
        ).json()["data"]
        == []
    )
