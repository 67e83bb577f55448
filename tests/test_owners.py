"""Named user keys across every resource that belongs to someone: another user's jobs, files
and batches are 404 over HTTP, an admin reads them, and batch lines count against their key's
quota and usage like live requests. Real uvicorn, the unchanged openai SDK, the emulator."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from batch_helpers import generation_lines, jsonl, wait_for
from test_keys import keys_toml, sha

ALICE = "fpx-owner-alice-" + "a" * 24
BOB = "fpx-owner-bob-" + "b" * 26
ROOT = "fpx-owner-root-" + "r" * 25
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def team(make_proxy, tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(
        keys_toml(
            {"name": "alice", "key_sha256": sha(ALICE), "role": "user", "daily_images": 2},
            {"name": "bob", "key_sha256": sha(BOB), "role": "user"},
            {"name": "root", "key_sha256": sha(ROOT), "role": "admin"},
        )
    )
    return make_proxy(api_keys_file=path, data_dir=tmp_path / "data", batch_poll_seconds=0.1)


def sdk(proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0, timeout=30)


def get(proxy, path: str, key: str, method: str = "GET") -> httpx.Response:
    return httpx.request(
        method, proxy.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_another_users_job_file_and_batch_are_not_found_but_an_admin_reads_them(team):
    alice = sdk(team, ALICE)
    job = alice.post(
        "/images/generations",
        body={"prompt": "a lighthouse", "model": "flux-1-schnell"},
        cast_to=httpx.Response,
        options={"headers": ASYNC},
    ).json()
    uploaded = alice.files.create(file=("in.jsonl", jsonl(generation_lines(1))), purpose="batch")
    batch = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h"
    )
    owned = [
        ("GET", f"/v1/images/jobs/{job['id']}"),
        ("DELETE", f"/v1/images/jobs/{job['id']}"),
        ("GET", f"/v1/files/{uploaded.id}"),
        ("GET", f"/v1/files/{uploaded.id}/content"),
        ("DELETE", f"/v1/files/{uploaded.id}"),
        ("GET", f"/v1/batches/{batch.id}"),
        ("POST", f"/v1/batches/{batch.id}/cancel"),
    ]
    for method, path in owned:
        refused = get(team, path, BOB, method)
        assert refused.status_code == 404, (method, path, refused.text)
        assert refused.json()["error"]["message"]
    assert all(b.id != batch.id for b in sdk(team, BOB).batches.list())
    assert all(f.id != uploaded.id for f in sdk(team, BOB).files.list())
    for method, path in owned:
        if method == "GET":
            assert get(team, path, ROOT).status_code == 200, path
    assert get(team, f"/v1/files/{uploaded.id}", ALICE).status_code == 200


def test_batch_lines_count_against_their_keys_quota_and_usage(team, emulator):
    alice = sdk(team, ALICE)
    uploaded = alice.files.create(file=("in.jsonl", jsonl(generation_lines(3))), purpose="batch")
    batch = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="48h"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = alice.batches.retrieve(batch.id).request_counts
        if counts.completed >= 2:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # fifteen runner ticks: the third line must stay unrun, not fail
    now = alice.batches.retrieve(batch.id)
    assert now.status == "in_progress"
    assert (now.request_counts.completed, now.request_counts.failed) == (2, 0)
    assert len(emulator.calls()) == 2
    quota = get(team, "/v1/usage/quota", ALICE).json()
    assert quota["images_used"] == 2 and quota["images_remaining"] == 0
    rows = get(team, "/v1/usage?group_by=key", ROOT).json()["data"]
    assert [(r["key"], r["images"]) for r in rows] == [("alice", 2)]

    # The next UTC day the key has room again and the batch finishes.
    team.clock.advance(86_400)
    done = wait_for(alice, batch.id, ("completed", "failed", "expired"))
    assert done.status == "completed" and done.request_counts.completed == 3
    assert len(emulator.calls()) == 3


def test_a_removed_keys_batch_is_not_made_without_its_limits(team, emulator, tmp_path):
    alice = sdk(team, ALICE)
    for number in range(2):  # her two images of the day: her batch rests until tomorrow
        alice.images.generate(prompt=f"a kite {number}", model="flux-1-schnell")
    uploaded = alice.files.create(file=("in.jsonl", jsonl(generation_lines(3))), purpose="batch")
    batch = alice.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="48h"
    )
    # The admin takes alice's key out of the file; the proxy picks that up without a restart.
    (tmp_path / "keys.toml").write_text(
        keys_toml(
            {"name": "bob", "key_sha256": sha(BOB), "role": "user"},
            {"name": "root", "key_sha256": sha(ROOT), "role": "admin"},
        )
    )
    deadline = time.monotonic() + 30
    while get(team, "/v1/models", ALICE).status_code != 401:
        assert time.monotonic() < deadline, "the keys file was not reloaded"
        time.sleep(0.2)

    team.clock.advance(86_400)  # a new day: her quota would have room again
    done = wait_for(sdk(team, ROOT), batch.id, ("completed", "failed", "expired"))
    assert done.request_counts.failed == 3 and done.request_counts.completed == 0
    assert len(emulator.calls()) == 2  # nothing made for a key that no longer exists
    errors = get(team, f"/v1/files/{done.error_file_id}/content", ROOT).text
    assert "alice" in errors and "key_removed" in errors
