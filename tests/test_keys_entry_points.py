"""Named user keys through the entry points beside the images routes: MCP over `/mcp`, async
jobs and batches. A user key sees over MCP what `/health` shows it (no per-account detail) and
only the models it may use; a job or batch it may not run is refused when it is submitted, not
after a 202 or line by line. Real uvicorn, the MCP SDK and the openai SDK, the emulator."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from batch_helpers import generation_lines, jsonl
from mcp_helpers import http_mcp
from test_keys import ALICE, CAROL, ROOT, TEAM, bearer, keys_toml

SMALL = {"model": "flux-2-klein-4b", "size": "256x256"}
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def team_proxy(make_proxy, tmp_path):
    """alice and bob: users with 2 images a day; carol: flux-1-schnell only; root: admin."""
    path = tmp_path / "keys.toml"
    path.write_text(keys_toml(*TEAM))
    return make_proxy(api_keys_file=path)


async def test_mcp_account_status_gives_a_user_key_the_summary_and_an_admin_the_accounts(
    team_proxy, emulator
):
    async with http_mcp(team_proxy.url + "/mcp", ALICE) as client:
        user = (await client.call_tool("account_status", {})).structured_content
    async with http_mcp(team_proxy.url + "/mcp", ROOT) as client:
        admin = (await client.call_tool("account_status", {})).structured_content
    ids = [emulator.account_id(n) for n in (1, 2, 3)]
    assert [entry["number"] for entry in admin["accounts"]] == [1, 2, 3]
    assert "accounts" not in user
    assert user["counts"] == {"available": 3, "cooling": 0, "parked": 0, "disabled": 0}
    assert user["usable_now"] is True and user["next_reset"] == admin["next_reset"]
    shown = str(user)
    for account_id in ids:  # not even masked: no "demo…0001"
        assert account_id not in shown and account_id[-4:] not in shown


async def test_mcp_list_models_shows_a_key_only_the_models_it_may_use(team_proxy):
    async with http_mcp(team_proxy.url + "/mcp", CAROL) as client:
        limited = (await client.call_tool("list_models", {})).structured_content
    async with http_mcp(team_proxy.url + "/mcp", ALICE) as client:
        everything = (await client.call_tool("list_models", {})).structured_content
    async with httpx.AsyncClient() as http:
        listed = await http.get(team_proxy.base_url + "/models", headers=bearer(CAROL))
    http_ids = [m["id"] for m in listed.json()["data"]]
    assert [m["id"] for m in limited["models"]] == http_ids
    assert [m["short_name"] for m in limited["models"]] == ["flux-1-schnell"]
    assert len(everything["models"]) > 1


async def test_an_async_job_the_key_cannot_run_is_refused_at_submit_not_after_a_202(
    team_proxy, emulator
):
    async with httpx.AsyncClient(base_url=team_proxy.base_url, timeout=30) as http:
        for number in range(2):  # alice's two images of the day
            made = await http.post(
                "/images/generations",
                json={"prompt": f"a kite {number}", **SMALL},
                headers={**bearer(ALICE), "Idempotency-Key": f"kite-{number}"},
            )
            assert made.status_code == 200, made.text
        calls = len(emulator.calls())
        over = await http.post(
            "/images/generations",
            json={"prompt": "one more kite", **SMALL},
            headers={**bearer(ALICE), **ASYNC},
        )
        other_model = await http.post(
            "/images/generations",
            json={"prompt": "a kite", **SMALL},  # carol may use flux-1-schnell only
            headers={**bearer(CAROL), **ASYNC},
        )
    assert over.status_code == 429, over.text
    assert over.json()["error"]["code"] == "key_quota_exceeded"
    assert over.headers["x-should-retry"] == "false" and int(over.headers["retry-after"]) >= 1
    assert "location" not in over.headers
    assert other_model.status_code == 403, other_model.text
    assert other_model.json()["error"]["code"] == "model_not_allowed"
    assert len(emulator.calls()) == calls

    # A repeat of a request already made is a replay that costs nothing: still accepted.
    async with httpx.AsyncClient(base_url=team_proxy.base_url, timeout=30) as http:
        again = await http.post(
            "/images/generations",
            json={"prompt": "a kite 1", **SMALL},
            headers={**bearer(ALICE), **ASYNC, "Idempotency-Key": "kite-1"},
        )
        assert again.status_code == 202, again.text
        for _ in range(100):
            job = await http.get(f"/images/jobs/{again.json()['id']}", headers=bearer(ALICE))
            if job.json()["status"] not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.1)
    assert job.json()["status"] == "completed", job.text
    assert len(emulator.calls()) == calls


async def test_a_batch_of_a_model_outside_the_keys_models_fails_validation_and_runs_nothing(
    team_proxy, emulator
):
    lines = generation_lines(2, model="flux-2-klein-4b")  # carol may use flux-1-schnell only
    async with openai.AsyncOpenAI(
        base_url=team_proxy.base_url, api_key=CAROL, max_retries=0
    ) as carol:
        uploaded = await carol.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await carol.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
        )
    assert batch.status == "failed"
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (1, "model_not_allowed", "model"),
        (2, "model_not_allowed", "model"),
    ]
    assert "flux-2-klein-4b" in batch.errors.data[0].message
    assert emulator.calls() == []


async def test_a_cache_hit_reports_no_neurons_spent_in_answers_streams_and_batches(
    team_proxy, emulator
):
    seeded = {"prompt": "a seeded lighthouse", **SMALL}
    seed = {"seed": 4242}
    async with openai.AsyncOpenAI(
        base_url=team_proxy.base_url, api_key=ROOT, max_retries=0
    ) as root:
        first = await root.images.with_raw_response.generate(**seeded, extra_body=seed)
        again = await root.images.with_raw_response.generate(**seeded, extra_body=seed)
        stream = await root.images.generate(**seeded, extra_body=seed, stream=True)
        events = [event async for event in stream]
        line = {"method": "POST", "url": "/v1/images/generations", "body": seeded | seed}
        lines = [{"custom_id": f"l{i}", **line} for i in range(3)]
        uploaded = await root.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
        batch = await root.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
        )
        for _ in range(300):
            batch = await root.batches.retrieve(batch.id)
            if batch.status not in ("validating", "in_progress", "finalizing"):
                break
            await asyncio.sleep(0.1)
    (call,) = emulator.calls()  # one image made; everything after came from the cache
    async with httpx.AsyncClient() as http:
        spent = (await http.get(f"{emulator.root}/__emulator/usage")).json()["accounts"]
    billed = spent[call["account"]]["neurons_used"]
    assert billed > 0
    assert first.headers["x-flux-cache"] == "miss"
    assert first.parse().usage.model_extra["neurons"] == pytest.approx(billed, abs=0.01)
    assert again.headers["x-flux-cache"] == "hit"
    assert again.parse().usage.model_extra["neurons"] == 0
    assert [e.usage.model_extra["neurons"] for e in events] == [0]
    assert batch.status == "completed" and batch.model_extra["neurons_used"] == 0
    async with httpx.AsyncClient() as http:
        usage = await http.get(
            team_proxy.base_url + "/usage", params={"group_by": "key"}, headers=bearer(ROOT)
        )
    (row,) = usage.json()["data"]
    assert (row["images"], row["cache_hits"]) == (1, 5)
    assert row["neurons"] == pytest.approx(billed, abs=0.01)
