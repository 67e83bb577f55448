"""Headless Chromium for the page's tests: the browser and a fresh page per test, shared by the
browser test modules (tests import this like `procs`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"

needs_chromium = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A fresh profile per test (no key, no history); fails the test if the page raised."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"the page raised: {errors}"


def open_view(page, url: str, key: str, view: str) -> None:
    """Load the page on `#view`, enter the key when asked, and wait for the models."""
    from playwright.sync_api import expect

    page.goto(f"{url}/#{view}")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.fill("#key-input", key)
    page.click("#key-save")
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator(f"main[data-view='{view}']")).to_be_visible()


def full_page_screenshot(page, path: Path, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 900})
    page.wait_for_timeout(200)
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": width, "height": height})
    page.wait_for_timeout(400)  # let transitions settle
    page.screenshot(path=str(path))


def sideways_overflow(page) -> int:
    return page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
