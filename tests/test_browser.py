"""The web page, driven in a real headless Chromium against a real proxy and the emulator.

Screenshots go to a temporary folder on every run; set UPDATE_SCREENSHOTS=1 to refresh
docs/screenshot.png (1280 wide) and docs/screenshot-mobile.png (390 wide).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import browser_helpers
import httpx
import pytest
from browser_helpers import DOCS_DIR, full_page_screenshot, needs_chromium

STATIC_DIR = Path(__file__).resolve().parent.parent / "flux_proxy" / "web" / "static"
GENERATIONS = "/v1/images/generations"

pytestmark = needs_chromium
browser, page = browser_helpers.browser, browser_helpers.page  # the fixtures

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
expect = sync_api.expect
expect.set_options(timeout=10_000)


# --- fixtures and helpers ---------------------------------------------------------------------


def enter_key(page, key: str) -> None:
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-save")


def open_page(page, proxy) -> None:
    page.goto(proxy.url)
    enter_key(page, proxy.key)
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#model option")).not_to_have_count(0)


def generation_requests(page) -> list:
    seen: list = []
    page.on("request", lambda r: r.url.endswith(GENERATIONS) and seen.append(r))
    return seen


def generate(page, prompt: str | None = None):
    """Click Generate and return the request the page sent and its JSON body."""
    if prompt is not None:
        page.fill("#prompt", prompt)
    with page.expect_request(lambda r: r.url.endswith(GENERATIONS)) as info:
        page.click("#generate")
    expect(page.locator("#progress")).to_be_hidden()
    return info.value, info.value.post_data_json


DROP_FILES_JS = """
async ({selector, files}) => {
  const made = [];
  for (const f of files) {
    if (f.text !== undefined) {
      made.push(new File([f.text], f.name, {type: f.type}));
      continue;
    }
    const canvas = document.createElement("canvas");
    canvas.width = f.width;
    canvas.height = f.height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = f.color;
    ctx.fillRect(0, 0, f.width, f.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    made.push(new File([blob], f.name, {type: "image/png"}));
  }
  const transfer = new DataTransfer();
  for (const file of made) transfer.items.add(file);
  const target = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    const init = {bubbles: true, cancelable: true, dataTransfer: transfer};
    target.dispatchEvent(new DragEvent(type, init));
  }
}
"""


def drop_files(page, files: list[dict]) -> None:
    """A real DataTransfer drag and drop of File objects built in the page."""
    page.evaluate(DROP_FILES_JS, {"selector": "#reference-drop", "files": files})


# --- the main path ----------------------------------------------------------------------------


def test_key_then_text_prompt_shows_the_image_with_the_account_that_made_it(page, proxy, emulator):
    page.goto(proxy.url)
    expect(page.locator("#key-dialog")).to_be_visible()  # no key yet: the page asks for one
    enter_key(page, proxy.key)
    expect(page.locator("#model")).to_have_value("@cf/black-forest-labs/flux-2-dev")

    request, body = generate(page, "a lighthouse on a cliff at dusk")

    assert request.headers["authorization"] == f"Bearer {proxy.key}"
    assert body["prompt"] == "a lighthouse on a cliff at dusk"
    assert body["model"] == "@cf/black-forest-labs/flux-2-dev"
    assert (body["width"], body["height"], body["n"]) == (1024, 768, 1)
    image = page.locator(".result-image")
    expect(image).to_be_visible()
    assert page.evaluate("document.querySelector('.result-image').naturalWidth") == 1024
    calls = emulator.calls()
    assert len(calls) == 1
    number = next(n for n, account_id, _ in emulator.accounts if account_id == calls[0]["account"])
    expect(page.locator(".fact-account")).to_have_text(f"#{number}")
    expect(page.locator(".fact-seed")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator(".result-actions a[download]")).to_have_attribute(
        "download", re.compile(r"^a-lighthouse-on-a-cliff-at-dusk-\d+\.png$")
    )
    # The key stays in this browser only, and the next visit does not ask again.
    page.reload()
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator("#key-dialog")).to_be_hidden()


def test_two_dropped_reference_images_reach_the_model_in_the_chosen_order(page, proxy, emulator):
    open_page(page, proxy)
    drop_files(
        page,
        [
            {"name": "wide.png", "width": 300, "height": 200, "color": "#d03030"},
            {"name": "tall.png", "width": 200, "height": 300, "color": "#3050d0"},
        ],
    )
    expect(page.locator(".ref-item")).to_have_count(2)
    expect(page.locator(".ref-label")).to_have_text(["image 0", "image 1"])

    _, body = generate(page, "the object from image 0 beside the object from image 1")

    assert len(body["images"]) == 2
    assert all(url.startswith("data:image/png;base64,") for url in body["images"])
    files = emulator.calls()[-1]["files"]
    assert (files["input_image_0"]["width"], files["input_image_0"]["height"]) == (300, 200)
    assert (files["input_image_1"]["width"], files["input_image_1"]["height"]) == (200, 300)

    # Reordering changes which image is "image 0".
    page.click("[aria-label='Move image 1 earlier']")
    expect(page.locator(".ref-item").first).to_have_attribute("title", re.compile("^tall.png"))
    generate(page)
    files = emulator.calls()[-1]["files"]
    assert (files["input_image_0"]["width"], files["input_image_0"]["height"]) == (200, 300)

    page.click("[aria-label='Remove image 0']")
    expect(page.locator(".ref-item")).to_have_count(1)


def test_files_that_are_not_images_are_refused_with_a_readable_message(page, proxy):
    open_page(page, proxy)
    drop_files(page, [{"name": "notes.txt", "text": "not an image", "type": "text/plain"}])
    expect(page.locator("#reference-error")).to_have_text(
        "notes.txt is not a PNG, JPEG or WebP image."
    )
    expect(page.locator(".ref-item")).to_have_count(0)


PASTE_JS = """
async () => {
  const canvas = document.createElement("canvas");
  canvas.width = 120;
  canvas.height = 90;
  canvas.getContext("2d").fillRect(0, 0, 120, 90);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], "clipboard.png", {type: "image/png"}));
  document.querySelector("#prompt").dispatchEvent(
    new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
}
"""


def test_references_can_be_pasted_or_chosen_and_oversized_files_are_refused(
    page, proxy, emulator, png
):
    open_page(page, proxy)
    page.evaluate(PASTE_JS)
    expect(page.locator(".ref-item")).to_have_count(1)
    page.set_input_files(
        "#reference-input",
        files=[{"name": "chosen.png", "mimeType": "image/png", "buffer": png(80, 60)}],
    )
    expect(page.locator(".ref-item")).to_have_count(2)
    oversized = png(8, 8) + b"\0" * (10 * 1024 * 1024)
    page.set_input_files(
        "#reference-input",
        files=[{"name": "huge.png", "mimeType": "image/png", "buffer": oversized}],
    )
    expect(page.locator("#reference-error")).to_have_text(
        "huge.png is 10.1 MB; the limit is 10 MB."
    )
    expect(page.locator(".ref-item")).to_have_count(2)
    generate(page, "image 0 and image 1")
    files = emulator.calls()[-1]["files"]
    assert (files["input_image_0"]["width"], files["input_image_1"]["width"]) == (120, 80)


# --- the prompt -------------------------------------------------------------------------------


def test_invalid_json_prompt_shows_an_inline_error_and_sends_nothing(page, proxy, emulator):
    open_page(page, proxy)
    sent = generation_requests(page)
    page.click("label[for='mode-json']")
    page.fill("#prompt", '{"scene": "a harbour at dawn",}')

    expect(page.locator("#prompt-error")).to_have_text(
        "Line 1, column 30: remove the comma before }."
    )
    expect(page.locator("#generate")).to_be_disabled()
    page.locator("#prompt").press("Control+Enter")
    page.wait_for_timeout(300)
    page.fill("#prompt", '{\n  "scene": harbour\n}')
    expect(page.locator("#prompt-error")).to_have_text(
        "Line 2, column 12: text values need double quotes."
    )
    page.click("#generate", force=True)  # a disabled button does nothing, even when forced
    assert sent == []
    assert emulator.calls() == []

    page.fill("#prompt", '{"scene": "a harbour at dawn"}')
    expect(page.locator("#prompt-error")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()
    with page.expect_request(lambda r: r.url.endswith(GENERATIONS)) as info:
        page.locator("#prompt").press("Control+Enter")  # the shortcut generates
    assert info.value.post_data_json["prompt"] == {"scene": "a harbour at dawn"}


def test_json_template_has_the_flux2_fields_and_is_pretty_printed(page, proxy):
    open_page(page, proxy)
    page.click("label[for='mode-json']")
    page.click("#json-template")
    text = page.input_value("#prompt")
    template = page.evaluate("(text) => JSON.parse(text)", text)
    assert {"scene", "subjects", "style", "color_palette", "lighting", "mood", "background"} <= set(
        template
    )
    assert {"composition", "camera"} <= set(template)
    assert {"type", "description", "pose", "position"} <= set(template["subjects"][0])
    assert len(template["color_palette"]) == 3
    assert all(re.fullmatch(r"#[0-9A-Fa-f]{6}", color) for color in template["color_palette"])
    assert {"angle", "distance", "focus", "lens", "f-number", "ISO"} <= set(template["camera"])
    assert "\n  " in text  # indented, one field per line

    page.fill("#prompt", '{"scene":"x","mood":"calm"}')
    page.click("#json-format")
    assert page.input_value("#prompt") == '{\n  "scene": "x",\n  "mood": "calm"\n}'


# --- errors and cancelling --------------------------------------------------------------------


def test_wrong_key_shows_a_clear_message_and_lets_the_user_enter_another(page, proxy, emulator):
    page.goto(proxy.url)
    enter_key(page, "not-the-key")
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-error")).to_have_text(
        "The proxy refused the API key (401). Enter the correct key to continue."
    )
    expect(page.locator("#key-button")).to_contain_text("Key refused")

    enter_key(page, proxy.key)
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#model option")).not_to_have_count(0)

    # A key that goes bad later is caught at Generate time, with the same clear message.
    page.evaluate("localStorage.setItem('flux-proxy.api-key', 'revoked')")
    generate(page, "a red bicycle")
    expect(page.locator("#message-text")).to_have_text(
        "The proxy refused the API key (401). Enter the correct key to continue."
    )
    expect(page.locator("#key-dialog")).to_be_visible()
    assert emulator.calls() == []


def test_cancel_aborts_the_request(page, proxy, emulator):
    httpx.post(f"{emulator.root}/__emulator/config", json={"latency": 3.0}).raise_for_status()
    open_page(page, proxy)
    page.fill("#prompt", "a slow painting")
    failed: list = []
    page.on("requestfailed", lambda r: r.url.endswith(GENERATIONS) and failed.append(r))
    page.click("#generate")
    expect(page.locator("#progress")).to_be_visible()
    # flux-2-dev's typical 25 s is for 1024x1024; the default 1024x768 is 3/4 of that.
    expect(page.locator("#progress-time")).to_contain_text("usually ~19 s")
    page.click("#cancel")

    expect(page.locator("#message-text")).to_contain_text("Cancelled")
    expect(page.locator("#progress")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()
    assert len(failed) == 1
    assert "ABORTED" in (failed[0].failure or "").upper()
    expect(page.locator(".result-image")).to_have_count(0)


def test_exhausted_accounts_are_explained_with_the_wait(page, proxy, emulator):
    open_page(page, proxy)
    emulator.fault(account=None, kind="error", status=429, code=3036, count=None)
    generate(page, "anything")
    message = page.locator("#message-text")
    expect(message).to_contain_text("No account can take this right now (429)")
    expect(message).to_contain_text(re.compile(r"Try again in [\d.]+ (s|min|h)\."))
    expect(page.locator(".result-image")).to_have_count(0)


def test_server_and_user_text_is_shown_as_text_never_as_markup(page, proxy):
    open_page(page, proxy)
    generate(page, "<b>bold</b> <img src=x onerror='window.pwned=1'>")
    expect(page.locator(".result-prompt")).to_have_text(
        "<b>bold</b> <img src=x onerror='window.pwned=1'>"
    )
    expect(page.locator(".history-prompt")).to_contain_text("<b>bold</b>")

    hostile = {
        "error": {
            "message": '<img src=x onerror="window.pwned=1"> refused',
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    page.route(
        "**" + GENERATIONS,
        lambda route: route.fulfill(
            status=400, content_type="application/json", body=json.dumps(hostile)
        ),
    )
    generate(page)
    expect(page.locator("#message-text")).to_have_text(
        'The request was refused (400): <img src=x onerror="window.pwned=1"> refused'
    )
    assert page.locator("main b, main img[src='x']").count() == 0
    assert page.evaluate("window.pwned") is None


# --- controls ---------------------------------------------------------------------------------


def test_controls_adapt_to_the_model(page, proxy, emulator):
    open_page(page, proxy)
    page.select_option("#model", "@cf/black-forest-labs/flux-2-klein-4b")
    expect(page.locator("#steps")).to_be_disabled()
    expect(page.locator("#steps-value")).to_have_text("4")
    expect(page.locator("#reference-drop")).to_be_enabled()
    _, body = generate(page, "a fox")
    assert "steps" not in body and body["model"].endswith("flux-2-klein-4b")

    page.select_option("#model", "@cf/black-forest-labs/flux-1-schnell")
    expect(page.locator("#width")).to_be_disabled()
    expect(page.locator("#height")).to_be_disabled()
    expect(page.locator("#reference-drop")).to_be_disabled()
    expect(page.locator("#seed")).to_be_disabled()
    expect(page.locator("#steps")).to_be_enabled()
    expect(page.locator("#steps")).to_have_attribute("max", "8")
    _, body = generate(page)
    assert {"width", "height", "seed", "images"}.isdisjoint(body)
    assert body["steps"] == 4
    expect(page.locator(".result-image")).to_be_visible()


def test_several_images_come_back_each_with_its_seed_and_account(page, proxy, emulator):
    open_page(page, proxy)
    page.click("label[for='n-3']")
    page.fill("#seed", "1000")
    _, body = generate(page, "three lanterns")
    assert (body["n"], body["seed"]) == (3, 1000)
    expect(page.locator(".result-figure")).to_have_count(3)
    expect(page.locator(".fact-seed")).to_have_text(["1000", "1001", "1002"])
    expect(page.locator(".fact-account")).to_have_text([re.compile(r"^#[123]$")] * 3)
    assert len(emulator.calls()) == 3


def test_status_bar_shows_parked_accounts_and_neurons_left(page, proxy, emulator):
    open_page(page, proxy)
    expect(page.locator("#status")).to_contain_text("30,000 neurons left today")
    for _, account_id, _ in emulator.accounts:
        emulator.set_usage(account_id, 10_000)
    generate(page, "anything")  # every account answers "allocation spent" and gets parked
    expect(page.locator("#status")).to_contain_text("0 available")
    expect(page.locator("#status")).to_contain_text("3 parked")
    expect(page.locator("#status")).to_contain_text("0 neurons left today")
    page.click(".status-menu summary")
    expect(page.locator(".accounts-table tbody tr")).to_have_count(3)


def test_custom_size_is_validated_and_clamped_and_shows_the_aspect_ratio(page, proxy):
    open_page(page, proxy)
    page.click("#size-presets button:has-text('1920×1080')")
    expect(page.locator("#aspect")).to_contain_text("16:9")
    page.fill("#width", "3000")
    expect(page.locator("#size-error")).to_contain_text("256 to 1920")
    expect(page.locator("#generate")).to_be_disabled()
    page.locator("#width").blur()
    expect(page.locator("#width")).to_have_value("1920")
    page.fill("#width", "1080")
    page.locator("#width").blur()
    expect(page.locator("#aspect")).to_contain_text("1:1")
    expect(page.locator("#size-error")).to_be_hidden()


def test_a_locked_seed_is_kept_and_an_unlocked_one_is_fresh_each_time(page, proxy):
    open_page(page, proxy)
    page.click("#seed-lock")
    expect(page.locator("#seed-lock")).to_have_attribute("aria-pressed", "true")
    _, first = generate(page, "a teapot")
    assert "seed" not in first  # empty field: the proxy picks one, and the page keeps it
    used = page.locator(".fact-seed").inner_text()
    expect(page.locator("#seed")).to_have_value(used)
    _, second = generate(page)
    assert second["seed"] == int(used)

    page.click("#seed-lock")
    _, third = generate(page)
    assert third["seed"] == int(used)  # still in the field for this one
    expect(page.locator("#seed")).to_have_value("")  # then back to random
    _, fourth = generate(page)
    assert "seed" not in fourth


# --- history ----------------------------------------------------------------------------------


def test_history_survives_a_reload_and_can_be_reused_and_deleted(page, proxy):
    open_page(page, proxy)
    generate(page, "first picture")
    page.click("#size-presets button:has-text('512×512')")
    generate(page, "second picture")
    expect(page.locator(".history-card")).to_have_count(2)

    page.reload()
    cards = page.locator(".history-card")
    expect(cards).to_have_count(2)
    expect(cards.locator(".history-prompt")).to_have_text(["second picture", "first picture"])

    cards.nth(1).locator(".history-open").click()
    expect(page.locator(".result-prompt")).to_have_text("first picture")
    expect(page.locator(".result-image")).to_be_visible()
    page.click("#reuse-settings")
    expect(page.locator("#prompt")).to_have_value("first picture")
    expect(page.locator("#width")).to_have_value("1024")
    expect(page.locator("#height")).to_have_value("768")

    cards.nth(0).locator("[aria-label='Delete from history']").click()
    expect(cards).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#history-clear")
    expect(cards).to_have_count(0)
    page.reload()
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator(".history-card")).to_have_count(0)


def test_a_result_can_become_a_reference_image(page, proxy, emulator):
    open_page(page, proxy)
    generate(page, "a castle")
    page.click("button:has-text('Use as reference')")
    expect(page.locator(".ref-item")).to_have_count(1)
    generate(page, "the castle from image 0 in winter")
    assert "input_image_0" in emulator.calls()[-1]["files"]


# --- what is served ---------------------------------------------------------------------------


def test_served_page_holds_no_key_token_markup_injection_or_outside_urls(proxy, emulator):
    names = sorted(path.name for path in STATIC_DIR.iterdir() if path.is_file())
    assert {"index.html", "app.js", "style.css", "favicon.svg"} <= set(names)
    texts = {"/": httpx.get(proxy.url + "/").text}
    for name in names:
        response = httpx.get(f"{proxy.url}/static/{name}")
        assert response.status_code == 200, name
        texts[name] = response.text
    secrets = [proxy.key] + [token for _, _, token in emulator.accounts]
    secrets += [account_id for _, account_id, _ in emulator.accounts]
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{name} contains a secret"
        assert "innerHTML" not in text and "outerHTML" not in text, name
        assert "insertAdjacentHTML" not in text, name
        outside = re.findall(r"https?://[^\s\"')]+", text)
        assert all(url.startswith("http://www.w3.org/") for url in outside), (name, outside)


# --- the look ---------------------------------------------------------------------------------


def test_emulator_mode_is_shown_plainly_and_the_page_fits_a_phone(
    page, make_proxy, tmp_path, emulator
):
    proxy = make_proxy(emulator=True)
    open_page(page, proxy)
    expect(page.locator("#emulator-badge")).to_have_text("EMULATOR — images are synthetic")
    expect(page.locator("#status")).to_contain_text("3 available")
    expect(page.locator("#status")).to_contain_text("neurons left today")

    page.click("#size-presets button:has-text('1280×720')")
    generate(page, "A quiet harbour town at dawn, fishing boats on glassy water, film photograph")
    drop_files(
        page,
        [
            {"name": "palette.png", "width": 320, "height": 240, "color": "#f2b134"},
            {"name": "subject.png", "width": 240, "height": 320, "color": "#1f3b4d"},
        ],
    )
    page.click("label[for='mode-json']")
    page.once("dialog", lambda dialog: dialog.accept())  # "replace the JSON prompt?"
    page.click("#json-template")
    page.click("#size-presets button:has-text('1024×768')")
    generate(page)
    expect(page.locator(".history-card")).to_have_count(2)

    desktop = tmp_path / "screenshot.png"
    full_page_screenshot(page, desktop, 1280)
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, "the page scrolls sideways on a phone"
    expect(page.locator("#emulator-badge")).to_be_visible()
    mobile = tmp_path / "screenshot-mobile.png"
    full_page_screenshot(page, mobile, 390)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        DOCS_DIR.mkdir(exist_ok=True)
        shutil.copy(desktop, DOCS_DIR / "screenshot.png")
        shutil.copy(mobile, DOCS_DIR / "screenshot-mobile.png")
