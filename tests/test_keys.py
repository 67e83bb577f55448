"""Named keys (API_KEYS_FILE): roles, per-key daily quotas, allowed models, usage rows, and who
sees what, through real uvicorn servers, the real openai SDK and the emulator over HTTP.

Process-level behaviour (reload on file change and SIGHUP, two replicas on one Redis, a
restart) is in `test_keys_processes.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import openai
import pytest
from reliability import SMALL, assert_openai_error

from flux_proxy.clock import iso, next_utc_midnight, utc_day
from flux_proxy.keys.keyfile import KeysFileError, parse_keys
from flux_proxy.settings import Settings

ALICE = "fpx-alice-" + "a" * 30
BOB = "fpx-bob-" + "b" * 32
CAROL = "fpx-carol-schnell-only-" + "c" * 20
ROOT = "fpx-root-admin-" + "r" * 25


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_toml(*tables: dict) -> str:
    out = []
    for table in tables:
        out.append("[[keys]]")
        for field, value in table.items():
            if isinstance(value, str):
                out.append(f'{field} = "{value}"')
            elif isinstance(value, list):
                out.append(
                    f"{field} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]"
                )
            else:
                out.append(f"{field} = {value}")
        out.append("")
    return "\n".join(out)


TEAM = (
    {"name": "alice", "key_sha256": sha(ALICE), "role": "user", "daily_images": 2},
    {"name": "bob", "key_sha256": sha(BOB), "role": "user", "daily_images": 2},
    {"name": "carol", "key_sha256": sha(CAROL), "role": "user", "models": ["flux-1-schnell"]},
    {"name": "root", "key_sha256": sha(ROOT), "role": "admin"},
)


@pytest.fixture
def keys_file(tmp_path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(keys_toml(*TEAM))
    return path


@pytest.fixture
def team_proxy(make_proxy, keys_file):
    return make_proxy(api_keys_file=keys_file)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def set_latency(emulator, seconds: float) -> None:
    httpx.post(f"{emulator.root}/__emulator/config", json={"latency": seconds}).raise_for_status()


# --- quotas --------------------------------------------------------------------------------


async def _ten_parallel(base_url: str, key: str) -> list[object]:
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        return await asyncio.gather(
            *(
                client.images.generate(prompt=f"lantern {i}", **SMALL)  # type: ignore[arg-type]
                for i in range(10)
            ),
            return_exceptions=True,
        )


def test_two_user_keys_with_two_images_a_day_get_exactly_two_each_of_ten_parallel_requests(
    team_proxy, emulator
):
    set_latency(emulator, 0.3)  # the ten overlap: every one is in flight before any settles
    try:

        async def both():
            return await asyncio.gather(
                _ten_parallel(team_proxy.base_url, ALICE), _ten_parallel(team_proxy.base_url, BOB)
            )

        results = asyncio.run(both())
    finally:
        set_latency(emulator, 0.0)

    midnight = next_utc_midnight(time.time())
    for answers in results:
        served = [a for a in answers if not isinstance(a, Exception)]
        refused = [a for a in answers if isinstance(a, Exception)]
        assert len(served) == 2 and len(refused) == 8, answers
        for error in refused:
            assert isinstance(error, openai.RateLimitError), error
            body = assert_openai_error(429, error.response.json())
            assert body["code"] == "key_quota_exceeded"
            assert error.response.headers["x-should-retry"] == "false"
            wait = int(error.response.headers["retry-after"])
            assert abs(time.time() + wait - midnight) < 30
    # The refused requests never reached Workers AI.
    assert len(emulator.calls()) == 4

    admin = httpx.get(
        team_proxy.base_url + "/usage", params={"group_by": "key"}, headers=team_proxy.auth
    ).json()
    by_key = {row["key"]: row for row in admin["data"]}
    assert {k: (r["images"], r["requests"]) for k, r in by_key.items()} == {
        "alice": (2, 2),
        "bob": (2, 2),
    }
    served_neurons = sum(
        a.usage.model_extra["neurons"]  # type: ignore[union-attr]
        for answers in results
        for a in answers
        if not isinstance(a, Exception)
    )
    assert admin["totals"]["neurons"] == pytest.approx(served_neurons, abs=0.05)


def test_quota_shows_a_user_key_its_limits_and_what_is_left(team_proxy, emulator):
    client = openai.OpenAI(base_url=team_proxy.base_url, api_key=ALICE, max_retries=0)
    client.images.generate(prompt="one", **SMALL)  # type: ignore[arg-type]

    quota = httpx.get(team_proxy.base_url + "/usage/quota", headers=bearer(ALICE)).json()

    now = team_proxy.clock.now()
    assert quota == {
        "object": "usage.quota",
        "key": "alice",
        "role": "user",
        "day": utc_day(now),
        "daily_images": 2,
        "daily_neurons": None,
        "models": None,
        "images_used": 1,
        "neurons_used": quota["neurons_used"],
        "images_reserved": 0,
        "neurons_reserved": 0,
        "images_remaining": 1,
        "neurons_remaining": None,
        "next_reset": iso(next_utc_midnight(now)),
    }
    assert quota["neurons_used"] > 0
    master = httpx.get(team_proxy.base_url + "/usage/quota", headers=team_proxy.auth).json()
    assert (master["key"], master["role"], master["daily_images"]) == ("master", "admin", None)


def test_a_model_not_in_the_keys_models_is_403_naming_it_and_never_sent(team_proxy, emulator):
    client = openai.OpenAI(base_url=team_proxy.base_url, api_key=CAROL, max_retries=0)

    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.images.generate(prompt="not this one", model="flux-2-klein-4b", size="256x256")

    error = assert_openai_error(403, refused.value.response.json())
    assert (error["code"], error["param"]) == ("model_not_allowed", "model")
    assert "flux-2-klein-4b" in error["message"]
    assert emulator.calls() == []
    # The allowed model, by its full id, works.
    image = client.images.generate(prompt="this one", model="@cf/black-forest-labs/flux-1-schnell")
    assert image.data[0].b64_json
    assert len(emulator.calls()) == 1


def test_a_streamed_answer_counts_against_the_key_like_any_other(team_proxy, emulator):
    with httpx.stream(
        "POST",
        team_proxy.base_url + "/images/generations",
        headers=bearer(BOB),
        json={"prompt": "a stream", "stream": True, **SMALL},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert "image_generation.completed" in body

    deadline = time.monotonic() + 10
    while True:  # the hold is settled as the stream closes
        quota = httpx.get(team_proxy.base_url + "/usage/quota", headers=bearer(BOB)).json()
        if quota["images_used"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (quota["images_used"], quota["images_reserved"]) == (1, 0)


# --- usage ---------------------------------------------------------------------------------


def test_usage_rows_group_by_several_dimensions_and_a_user_key_sees_only_its_own(
    team_proxy, emulator
):
    for key in (ALICE, BOB, BOB):
        answer = httpx.post(
            team_proxy.base_url + "/images/generations",
            headers=bearer(key),
            json={"prompt": "usage", **SMALL},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    today = utc_day(team_proxy.clock.now())

    admin = httpx.get(
        team_proxy.base_url + "/usage",
        params={"start": today, "end": today, "group_by": "key,account,day"},
        headers=bearer(ROOT),
    ).json()
    assert admin["scope"] == "all" and admin["group_by"] == ["key", "account", "day"]
    assert sum(r["images"] for r in admin["data"] if r["key"] == "bob") == 2
    assert {(r["key"], r["day"]) for r in admin["data"]} == {("alice", today), ("bob", today)}
    assert all(isinstance(r["account"], int) for r in admin["data"])
    assert set(admin["data"][0]) == {
        "key",
        "account",
        "day",
        "images",
        "neurons",
        "requests",
        "cache_hits",
        "neurons_saved",
    }

    own = httpx.get(
        team_proxy.base_url + "/usage", params={"group_by": "key"}, headers=bearer(ALICE)
    ).json()
    assert own["scope"] == "key" and own["key"] == "alice"
    assert [(r["key"], r["images"]) for r in own["data"]] == [("alice", 1)]
    # Asking for someone else's rows still gives only one's own.
    asked = httpx.get(
        team_proxy.base_url + "/usage", params={"key": "bob"}, headers=bearer(ALICE)
    ).json()
    assert asked["key"] == "alice" and asked["totals"]["images"] == 1
    # Far-off dates cost nothing: the range is cut to the days rows are kept for.
    wide = httpx.get(
        team_proxy.base_url + "/usage",
        params={"start": "1900-01-01", "end": "9999-12-31"},
        headers=bearer(ROOT),
    ).json()
    assert (wide["end"], wide["totals"]["images"]) == (today, 3)
    assert wide["start"] == (date.fromisoformat(today) - timedelta(days=90)).isoformat()


@pytest.mark.parametrize(
    "params, param",
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01"}, "end"),
        ({"start": "20260201"}, "start"),  # ISO 8601, but not the YYYY-MM-DD asked for
        ({"end": "2026-W05-1"}, "end"),
        ({"start": "2026-02-02", "end": "2026-02-01"}, "start"),
        ({"group_by": "colour"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
    ],
)
def test_bad_usage_parameters_are_a_400_naming_them(team_proxy, params, param):
    answer = httpx.get(team_proxy.base_url + "/usage", params=params, headers=bearer(ALICE))
    assert answer.status_code == 400
    assert assert_openai_error(400, answer.json())["param"] == param


# --- who sees what -------------------------------------------------------------------------


def test_health_gives_per_account_detail_only_to_admin_keys(team_proxy, emulator):
    for headers in ({}, bearer(ALICE), bearer("fpx-not-a-key")):
        answer = httpx.get(team_proxy.url + "/health", headers=headers)
        body = answer.json()
        assert "accounts" not in body
        assert body["counts"] == {"available": 3, "cooling": 0, "parked": 0, "disabled": 0}
        assert body["next_reset"] == iso(next_utc_midnight(team_proxy.clock.now()))
        assert body["neurons_remaining_today"] == 30_000
        for _, account_id, _ in emulator.accounts:
            masked = f"{account_id[:4]}…{account_id[-4:]}"
            assert account_id not in answer.text and masked not in answer.text
    for key in (ROOT, team_proxy.key):
        body = httpx.get(team_proxy.url + "/health", headers=bearer(key)).json()
        assert [a["number"] for a in body["accounts"]] == [1, 2, 3]


def test_user_keys_use_models_and_images_but_no_key_is_refused(team_proxy):
    every = httpx.get(team_proxy.base_url + "/models", headers=bearer(ALICE)).json()["data"]
    assert len(every) > 1
    limited = httpx.get(team_proxy.base_url + "/models", headers=bearer(CAROL)).json()["data"]
    assert [m["id"] for m in limited] == ["@cf/black-forest-labs/flux-1-schnell"]
    # One model by name: what the list leaves out is not there for this key either.
    one = httpx.get(team_proxy.base_url + "/models/flux-1-schnell", headers=bearer(CAROL))
    assert one.json()["id"] == "@cf/black-forest-labs/flux-1-schnell"
    hidden = httpx.get(team_proxy.base_url + "/models/flux-2-dev", headers=bearer(CAROL))
    assert assert_openai_error(404, hidden.json())["code"] == "model_not_found"
    shown = httpx.get(team_proxy.base_url + "/models/flux-2-dev", headers=bearer(ALICE))
    assert shown.status_code == 200
    refused = httpx.get(team_proxy.base_url + "/models", headers=bearer(ALICE + "x"))
    assert refused.status_code == 401
    assert assert_openai_error(401, refused.json())["code"] == "invalid_api_key"


def test_metrics_need_an_admin_key_when_metrics_auth_is_admin(make_proxy, keys_file):
    proxy = make_proxy(api_keys_file=keys_file, metrics_auth="admin")
    assert httpx.get(proxy.url + "/metrics").status_code == 401
    user = httpx.get(proxy.url + "/metrics", headers=bearer(ALICE))
    assert user.status_code == 403
    assert assert_openai_error(403, user.json())["code"] == "admin_key_required"
    assert httpx.get(proxy.url + "/metrics", headers=bearer(ROOT)).status_code == 200


def test_metrics_are_open_by_default_and_carry_key_names_not_keys(team_proxy, emulator):
    httpx.post(
        team_proxy.base_url + "/images/generations",
        headers=bearer(ALICE),
        json={"prompt": "metrics", **SMALL},
        timeout=30,
    ).raise_for_status()
    text = httpx.get(team_proxy.url + "/metrics").text
    assert 'flux_proxy_key_images_total{key_name="alice",model="flux-2-klein-4b"} 1.0' in text
    for key in (ALICE, BOB, CAROL, ROOT, sha(ALICE)):
        assert key not in text


# --- the keys file -------------------------------------------------------------------------

SETTINGS = Settings(_env_file=None)


@pytest.mark.parametrize(
    "document, complaint",
    [
        ({"keys": [{"name": "a", "key_sha256": "00" * 32, "daily_image": 3}]}, "unknown field"),
        ({"keys": [{"name": "a b", "key_sha256": "00" * 32}]}, "`name`"),
        ({"keys": [{"name": "master", "key_sha256": "00" * 32}]}, "reserved"),
        ({"keys": [{"name": "a", "key_sha256": "xyz"}]}, "64 hex"),
        ({"keys": [{"name": "a"}]}, "exactly one"),
        ({"keys": [{"name": "a", "key_sha256": "00" * 32, "role": "owner"}]}, "`role`"),
        ({"keys": [{"name": "a", "key_sha256": "00" * 32, "daily_images": -1}]}, "0 or more"),
        ({"keys": [{"name": "a", "key_sha256": "00" * 32, "daily_images": 1.5}]}, "whole"),
        ({"keys": [{"name": "a", "key_sha256": "00" * 32, "models": ["dall-e-9"]}]}, "dall-e-9"),
        (
            {"keys": [{"name": "a", "key_sha256": "00" * 32}, {"name": "a", "key": "k2"}]},
            "used twice",
        ),
        (
            {"keys": [{"name": "a", "key": "same-key"}, {"name": "b", "key": "same-key"}]},
            "repeats",
        ),
        ({"alice": {"key": "k"}}, "[[keys]]"),
    ],
)
def test_a_keys_file_with_any_mistake_is_refused_whole(document, complaint):
    with pytest.raises(KeysFileError) as refused:
        parse_keys(document, SETTINGS, where="keys.toml")
    assert complaint in str(refused.value)
    assert "same-key" not in str(refused.value)


def test_models_are_matched_by_short_name_id_or_alias():
    (entry,) = parse_keys(
        {"keys": [{"name": "a", "key": "k", "models": ["flux-2-dev", "dall-e-3"]}]},
        SETTINGS,
        where="keys.toml",
    )
    assert entry.caller.models == {"@cf/black-forest-labs/flux-2-dev"}  # dall-e-3 → default
    assert entry.plain and entry.caller.role == "user"


def test_a_bad_keys_file_stops_start_up_without_echoing_a_key(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text('[[keys]]\nname = "a"\nkey = "fpx-secret-plain-key"\nrole = "boss"\n')
    started = subprocess.run(
        [sys.executable, "-m", "flux_proxy", "serve", "--port", "1"],
        env={"API_KEYS_FILE": str(path), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert "API_KEYS_FILE" in started.stderr and "`role`" in started.stderr
    assert "fpx-secret-plain-key" not in started.stdout + started.stderr


def test_keys_new_prints_a_key_once_and_a_block_that_works(make_proxy, tmp_path, emulator):
    made = subprocess.run(
        [sys.executable, "-m", "flux_proxy", "keys", "new", "dana", "--daily-images", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = made.stderr.splitlines()
    key = next(line for line in lines if line.startswith("fpx-"))
    block = made.stdout  # the block alone: stdout is what `>> keys.toml` appends
    assert made.stderr.count(key) == 1 and "fpx-" not in block
    assert block.lstrip().startswith("[[keys]]")
    assert f'key_sha256 = "{sha(key)}"' in block
    assert 'role = "user"' in block and "daily_images = 5" in block

    path = tmp_path / "keys.toml"
    path.write_text(block)
    proxy = make_proxy(api_keys_file=path)
    client = openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)
    assert client.images.generate(prompt="dana's first", **SMALL).data  # type: ignore[arg-type]
    quota = httpx.get(proxy.base_url + "/usage/quota", headers=bearer(key)).json()
    assert (quota["key"], quota["daily_images"], quota["images_remaining"]) == ("dana", 5, 4)
    second = subprocess.run(
        [sys.executable, "-m", "flux_proxy", "keys", "new", "dana"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert key not in second.stderr  # a fresh random key every time


def test_seeded_cache_hits_fill_their_own_columns_and_cost_no_quota(team_proxy, emulator):
    body = {"prompt": "the same lighthouse", "seed": 7, **SMALL}
    answers = [
        httpx.post(
            team_proxy.base_url + "/images/generations",
            headers=bearer(ALICE),
            json=body,
            timeout=30,
        )
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-flux-cache"] for a in answers] == ["miss", "hit"]
    assert len(emulator.calls()) == 1

    rows = httpx.get(
        team_proxy.base_url + "/usage", params={"group_by": "account"}, headers=bearer(ALICE)
    ).json()["data"]
    made = answers[0].json()
    assert [(r["account"], r["images"], r["requests"], r["cache_hits"]) for r in rows] == [
        (made["account_used"], 1, 1, 0),
        (None, 0, 1, 1),
    ]
    assert rows[1]["neurons_saved"] == pytest.approx(made["usage"]["neurons"], abs=0.01)
    quota = httpx.get(team_proxy.base_url + "/usage/quota", headers=bearer(ALICE)).json()
    assert quota["images_used"] == 1 and quota["images_remaining"] == 1


def test_a_request_refused_by_its_quota_leaves_its_idempotency_key_free(team_proxy, emulator):
    def send(key: str):
        return httpx.post(
            team_proxy.base_url + "/images/generations",
            headers={**bearer(BOB), "Idempotency-Key": key},
            json={"prompt": "idempotent", **SMALL, "n": 3},
            timeout=90,
        )

    refused = send("order-1")
    assert refused.status_code == 429, refused.text
    assert assert_openai_error(429, refused.json())["code"] == "key_quota_exceeded"
    # The same key again is refused by the quota again, not left waiting on a marker for the
    # work that never started (which would end in 409 request_in_progress).
    again = send("order-1")
    assert again.status_code == 429, again.text
    assert emulator.calls() == []


def test_usage_for_the_first_days_of_the_calendar_is_empty_not_an_error(team_proxy):
    answer = httpx.get(
        team_proxy.base_url + "/usage", params={"end": "0001-01-01"}, headers=bearer(ROOT)
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"] == []


def test_a_request_that_made_nothing_frees_its_hold_and_counts_as_a_request(team_proxy, emulator):
    emulator.fault(status=500, count=None)  # every call fails: nothing is made
    failed = httpx.post(
        team_proxy.base_url + "/images/generations",
        headers=bearer(ALICE),
        json={"prompt": "nothing comes of it", **SMALL, "n": 2},
        timeout=30,
    )
    assert failed.status_code >= 500, failed.text[:300]

    quota = httpx.get(team_proxy.base_url + "/usage/quota", headers=bearer(ALICE)).json()
    assert (quota["images_used"], quota["images_reserved"], quota["images_remaining"]) == (0, 0, 2)
    rows = httpx.get(
        team_proxy.base_url + "/usage", params={"group_by": "account"}, headers=bearer(ALICE)
    ).json()["data"]
    assert [(r["account"], r["images"], r["requests"]) for r in rows] == [(None, 0, 1)]
