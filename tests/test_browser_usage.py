"""The page's Usage view in headless Chromium, against a real proxy with named keys and the
emulator: bars per account that served, budgets left, images per key, a user's own quota."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import browser_helpers
import httpx
import pytest
from browser_helpers import DOCS_DIR, full_page_screenshot, needs_chromium, open_view
from browser_helpers import sideways_overflow as overflow

from flux_proxy.store.base import UsageRow

pytestmark = needs_chromium
browser, page = browser_helpers.browser, browser_helpers.page  # the fixtures
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
expect = sync_api.expect
expect.set_options(timeout=15_000)

ALICE_KEY = "alice-key-5b0e1d2c3a4f"


@pytest.fixture
def team_proxy(make_proxy, tmp_path):
    """A proxy with the master key (admin) and a user key `alice` allowed 3 images a day."""
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(ALICE_KEY.encode()).hexdigest()
    keys.write_text(
        f'[[keys]]\nname = "alice"\nkey_sha256 = "{digest}"\nrole = "user"\ndaily_images = 3\n'
    )
    return make_proxy(api_keys_file=keys, routing_strategy="round_robin")


def make_images(proxy, key: str, count: int) -> None:
    for number in range(count):
        response = httpx.post(
            f"{proxy.base_url}/images/generations",
            json={"prompt": f"a lantern, take {number}", "size": "512x512"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text


def today(proxy) -> str:
    return datetime.datetime.fromtimestamp(proxy.clock.now(), datetime.UTC).date().isoformat()


def test_admins_see_bars_for_the_accounts_that_served_their_budgets_and_each_keys_images(
    page, team_proxy, emulator
):
    proxy = team_proxy
    make_images(proxy, ALICE_KEY, 2)
    make_images(proxy, proxy.key, 1)
    served: dict[int, int] = {}
    for call in emulator.calls():
        number = next(n for n, account, _ in emulator.accounts if account == call["account"])
        served[number] = served.get(number, 0) + 1
    assert sum(served.values()) == 3 and len(served) >= 2  # round robin spreads them

    open_view(page, proxy.url, proxy.key, "usage")
    accounts = page.locator("#usage-accounts .account-usage")
    expect(accounts).to_have_count(3)
    health = httpx.get(proxy.url + "/health", headers=proxy.auth).json()["accounts"]
    for entry in health:
        card = page.locator(f".account-usage[data-account='{entry['number']}']")
        bars = card.locator("rect.bar")
        if entry["number"] in served:
            expect(bars).to_have_count(1)  # today's, in a 14-day chart
            assert bars.get_attribute("data-day") == today(proxy)
            assert float(bars.get_attribute("data-value")) == pytest.approx(
                entry["neurons_used_today"], rel=0.01
            )
        else:
            expect(bars).to_have_count(0)
        left = f"{math.floor(entry['neurons_remaining_today'] + 0.5):,}"  # JS rounds half up
        expect(card.locator(".account-remaining .meter-text")).to_have_text(
            f"{left} of {round(entry['daily_budget']):,} neurons left today"
        )

    keys = page.locator("#usage-keys")
    expect(keys.locator(".chart-legend li")).to_have_text(["alice", "master"])
    values = {
        bar.get_attribute("data-series"): float(bar.get_attribute("data-value"))
        for bar in keys.locator("rect.bar").all()
    }
    assert values == {"alice": 2, "master": 1}
    expect(page.locator("#usage-quota .quota-name")).to_have_text("master")
    expect(page.locator("#usage-cache")).to_be_visible()
    expect(page.locator("#usage-mine")).to_be_hidden()


def test_a_user_key_sees_its_own_quota_and_days_and_no_account_detail(page, team_proxy, emulator):
    proxy = team_proxy
    make_images(proxy, ALICE_KEY, 2)
    make_images(proxy, proxy.key, 1)
    open_view(page, proxy.url, ALICE_KEY, "usage")
    quota = page.locator("#usage-quota")
    expect(quota.locator(".quota-name")).to_have_text("alice")
    expect(quota.locator(".role-user")).to_have_text("user")
    expect(quota.locator(".quota-images .meter-text")).to_have_text("1 of 3 images left today")
    expect(quota.locator(".quota-images .quota-used")).to_have_text("2 images used today")
    expect(quota.locator(".quota-neurons .meter-text")).to_have_text("no daily limit")
    mine = page.locator("#usage-mine rect.bar")
    expect(mine).to_have_count(1)
    assert mine.get_attribute("data-value") == "2"  # hers only, not the master key's
    expect(page.locator("#usage-accounts")).to_be_hidden()
    expect(page.locator("#usage-keys")).to_be_hidden()
    # The status bar still shows the pool's summary, which /health gives every key.
    expect(page.locator("#status")).to_contain_text("3 available")


def test_a_keys_models_are_named_as_people_type_them_with_the_id_in_a_tooltip(
    page, make_proxy, tmp_path, emulator
):
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(ALICE_KEY.encode()).hexdigest()
    keys.write_text(
        f'[[keys]]\nname = "alice"\nkey_sha256 = "{digest}"\nrole = "user"\n'
        'models = ["flux-1-schnell", "@cf/black-forest-labs/flux-2-klein-4b"]\n'
    )
    proxy = make_proxy(api_keys_file=keys)
    listed = httpx.get(f"{proxy.base_url}/models", headers={"Authorization": f"Bearer {proxy.key}"})
    short = {m["id"]: m["short_name"] for m in listed.json()["data"]}
    open_view(page, proxy.url, ALICE_KEY, "usage")
    names = page.locator("#usage-quota .quota-model")
    expect(names).to_have_count(2)
    shown = {names.nth(i).inner_text(): names.nth(i).get_attribute("title") for i in range(2)}
    assert shown == {short[i]: i for i in shown.values()}
    assert set(shown) == {"flux-1-schnell", "flux-2-klein-4b"}
    expect(page.locator("#usage-quota")).not_to_contain_text("@cf/")


def test_a_user_keys_accounts_popover_gives_the_summary_not_an_empty_table(
    page, team_proxy, emulator
):
    open_view(page, team_proxy.url, ALICE_KEY, "generate")
    page.click(".status-menu summary")
    details = page.locator("#accounts-details")
    expect(details).to_be_visible()
    expect(details).to_contain_text("3 accounts")
    expect(details).to_contain_text("3 available")
    expect(details).to_contain_text("admin keys")
    expect(details).not_to_contain_text("0 accounts")
    expect(details).not_to_contain_text("@cf/")
    expect(details.locator("table")).to_have_count(0)  # no empty per-account table


def test_a_user_key_past_its_quota_is_told_its_own_quota_is_spent_not_the_accounts(
    page, team_proxy, emulator
):
    make_images(team_proxy, ALICE_KEY, 3)  # her daily_images
    page.goto(f"{team_proxy.url}/#generate")
    # The key dialog speaks to people given a named key, not only to the master key's owner.
    expect(page.locator("#key-dialog")).to_contain_text("keys new")
    page.fill("#key-input", ALICE_KEY)
    page.click("#key-save")
    expect(page.locator("#model option")).not_to_have_count(0)
    calls = len(emulator.calls())
    page.fill("#prompt", "one more lantern")
    page.click("#generate")
    message = page.locator("#message")
    expect(message).to_contain_text("Over your key's daily quota (429)")
    expect(message).to_contain_text("daily_images")
    expect(message).not_to_contain_text("No account")
    assert len(emulator.calls()) == calls


def _overlaps(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_chart_axes_count_in_whole_numbers_and_no_bar_covers_their_labels(
    browser, team_proxy, emulator
):
    proxy = team_proxy
    make_images(proxy, ALICE_KEY, 3)  # a top of 5 would put a grid line at 2.5 images
    first_day = datetime.date.fromisoformat(today(proxy)) - datetime.timedelta(days=13)
    earlier = UsageRow(first_day.isoformat(), "alice", "1", "flux-2-dev", images=3, requests=3)
    with ThreadPoolExecutor(1) as thread:  # a bar in the first column, under the labels' place
        thread.submit(asyncio.run, proxy.store.record_usage([earlier], keep_days=90)).result()
    for width in (1280, 390):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        open_view(page, proxy.url, ALICE_KEY, "usage")
        chart = page.locator("#usage-mine")
        expect(chart.locator("rect.bar")).to_have_count(2)
        labels = chart.locator("svg text:not(.chart-tick)")  # the y axis's
        expect(labels).not_to_have_count(0)
        levels = sorted(int(text) for text in labels.all_text_contents() if text != "0")
        assert len(levels) == 2 and levels[0] * 2 == levels[1] >= 3  # whole counts, no 2.5
        bars = [bar.bounding_box() for bar in chart.locator("rect.bar").all()]
        for label in labels.all():
            box = label.bounding_box()
            assert not any(_overlaps(box, bar) for bar in bars), (width, label.text_content())
        context.close()


def test_views_fit_a_phone_and_screenshots_of_batches_and_usage(
    page, make_proxy, tmp_path, emulator
):
    proxy = make_proxy(
        emulator=True,
        routing_strategy="round_robin",
        account_concurrency=1,
        batch_poll_seconds=0.2,
    )
    make_images(proxy, proxy.key, 4)
    # Two earlier weeks of a small team, written through the store protocol as the proxy's
    # own requests would have, so the screenshot shows what the charts are for.
    history = [
        UsageRow(
            (datetime.date.fromisoformat(today(proxy)) - datetime.timedelta(days=ago)).isoformat(),
            key,
            str(account),
            "@cf/black-forest-labs/flux-2-dev",
            images=images,
            neurons=images * 937.5,
            requests=images,
        )
        for ago in range(1, 14)
        for key, account, images in (
            ("alice", 1 + ago % 3, 2 + ago % 4),
            ("design-bot", 1 + (ago + 1) % 3, 1 + (ago * 7) % 5),
            ("master", 1 + (ago + 2) % 3, ago % 2),
        )
        if images
    ]
    with ThreadPoolExecutor(1) as thread:  # playwright's sync API holds this thread's loop
        thread.submit(asyncio.run, proxy.store.record_usage(history, keep_days=90)).result()
    open_view(page, proxy.url, proxy.key, "batches")
    page.fill("#batch-prompts", "a lighthouse at dusk\na fox in fresh snow\na red tea kettle")
    page.select_option("#batch-size", "512x512")
    page.click("#batch-submit")
    expect(page.locator(".batch-card").first).to_have_attribute("data-status", "completed")
    httpx.post(f"{emulator.root}/__emulator/config", json={"latency": 2.0}).raise_for_status()
    page.fill("#batch-prompts", "\n".join(f"product shot {n}, white background" for n in range(40)))
    expect(page.locator("#batch-estimate")).to_have_text(re.compile(r"^≈ [\d,]+ neurons: "))
    page.click("#batch-submit")
    running = page.locator(".batch-card").first
    expect(running).to_have_attribute("data-status", "in_progress")
    expect(running.locator(".batch-count-text")).to_have_text(re.compile(r"^([3-9]|\d\d) of 40"))
    page.fill("#batch-prompts", "a harbour town at dawn\na paper boat on a puddle")
    expect(page.locator("#batch-estimate")).to_contain_text("neurons")

    shots = {}
    for view in ("batches", "usage"):
        page.goto(f"{proxy.url}/#{view}")
        if view == "usage":
            expect(page.locator("#usage-accounts .account-usage")).to_have_count(3)
        else:
            expect(page.locator(".batch-card")).to_have_count(2)
            page.fill("#batch-prompts", "\n".join(f"product shot {n}, white" for n in range(40)))
            expect(page.locator("#batch-estimate")).to_contain_text("at today's budgets about")
            page.evaluate("document.querySelector('#batch-prompts').scrollTop = 0")
        for width, suffix in ((1280, ""), (390, "-mobile")):
            page.set_viewport_size({"width": width, "height": 844})
            assert overflow(page) <= 0, f"the {view} view scrolls sideways at {width} px"
            path = tmp_path / f"screenshot-{view}{suffix}.png"
            full_page_screenshot(page, path, width)
            shots[path.name] = path
    httpx.post(f"{emulator.root}/__emulator/config", json={"latency": 0.0}).raise_for_status()
    if os.environ.get("UPDATE_SCREENSHOTS"):
        for name, path in shots.items():
            shutil.copy(path, DOCS_DIR / name)
