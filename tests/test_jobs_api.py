"""Async image jobs over HTTP: `Prefer: respond-async` answers 202 with a `Location`, the job is
polled to `completed` with the ImagesResponse inside, cancelled while queued (409 once sent),
visible only to its owner, and bad input is refused before anything is queued.

Real uvicorn servers and the real openai SDK against the emulator over HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import API_KEY
from PIL import Image

ASYNC = {"Prefer": "respond-async"}
SECOND_KEY = "test-key-second-fedcba9876543210"


def wait_for_status(client: httpx.Client, job_id: str, statuses: set[str], deadline=30.0):
    end = time.monotonic() + deadline
    while True:
        job = client.get(f"/v1/images/jobs/{job_id}").json()
        if job.get("status") in statuses:
            return job
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} is still {job.get('status')}: {job}")
        time.sleep(0.05)


def set_latency(emulator, seconds: float) -> None:
    httpx.post(f"{emulator.root}/__emulator/config", json={"latency": seconds}).raise_for_status()


@pytest.fixture
def http(proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, headers=proxy.auth, timeout=30) as client:
        yield client


def test_the_sdk_gets_202_with_location_and_polls_the_job_to_a_decodable_image(proxy, emulator):
    client = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0)
    raw = client.images.with_raw_response.generate(
        prompt="a lighthouse at dusk",
        size="512x512",
        response_format="b64_json",
        extra_headers=ASYNC,
    )
    assert raw.status_code == 202
    job = raw.http_response.json()
    assert job["object"] == "image.job" and job["id"].startswith("imgjob_")
    assert job["status"] in ("queued", "in_progress")
    assert job["result"] is None and job["error"] is None and job["completed_at"] is None
    assert raw.headers["location"] == f"/v1/images/jobs/{job['id']}"
    assert raw.headers["preference-applied"] == "respond-async"

    deadline = time.monotonic() + 30
    while job["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = client.get(f"/images/jobs/{job['id']}", cast_to=object)

    assert job["status"] == "completed", job
    assert job["completed_at"] >= job["created_at"]
    result = job["result"]
    assert result["object"] == "image.generation" and len(result["data"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(result["data"][0]["b64_json"])))
    assert image.size == (512, 512)
    assert "url" not in result["data"][0]  # the job's own response_format
    assert len(emulator.calls()) == 1


def test_a_url_job_answers_with_a_url_that_serves_the_image(proxy, http):
    response = http.post(
        "/v1/images/generations",
        json={"prompt": "a red kite", "response_format": "url", "n": 2},
        headers=ASYNC,
    )
    assert response.status_code == 202
    job = wait_for_status(http, response.json()["id"], {"completed", "failed"})
    assert job["status"] == "completed", job
    urls = [entry["url"] for entry in job["result"]["data"]]
    assert len(urls) == 2 and all(u.startswith(proxy.url + "/v1/images/files/") for u in urls)
    image = httpx.get(urls[0], timeout=10)
    assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
    jobs = httpx.get(proxy.url + "/health", timeout=10).json()["jobs"]
    assert jobs == {"ok": True, "backend": "memory", "pending": 0, "workers": 4}


def test_an_edit_job_with_an_uploaded_image_completes(http, png, emulator):
    response = http.post(
        "/v1/images/edits",
        data={"prompt": "make it blue", "response_format": "b64_json"},
        files={"image": ("in.png", png(64, 64), "image/png")},
        headers=ASYNC,
    )
    assert response.status_code == 202, response.text
    job = wait_for_status(http, response.json()["id"], {"completed", "failed"})
    assert job["status"] == "completed", job
    assert job["result"]["data"][0]["b64_json"]
    assert len(emulator.calls()) == 1


def test_a_queued_job_can_be_cancelled_and_a_sent_one_gives_409(make_proxy, emulator):
    proxy = make_proxy(job_workers=1)  # one worker: the second job waits in the queue
    set_latency(emulator, 2.0)
    try:
        with httpx.Client(base_url=proxy.url, headers=proxy.auth, timeout=30) as http:
            body = {"prompt": "slow", "response_format": "b64_json"}
            first = http.post("/v1/images/generations", json=body, headers=ASYNC).json()
            second = http.post("/v1/images/generations", json=body, headers=ASYNC).json()
            wait_for_status(http, first["id"], {"in_progress"})

            cancelled = http.delete(f"/v1/images/jobs/{second['id']}")
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled"
            assert http.delete(f"/v1/images/jobs/{second['id']}").status_code == 200  # again

            refused = http.delete(f"/v1/images/jobs/{first['id']}")
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "job_not_cancellable"
            assert refused.headers["x-should-retry"] == "false"  # the SDKs would retry a 409

            done = wait_for_status(http, first["id"], {"completed", "failed"})
            assert done["status"] == "completed"
            assert http.delete(f"/v1/images/jobs/{first['id']}").status_code == 409
            time.sleep(0.5)  # a worker is free now: the cancelled job must stay unsent
            assert http.get(f"/v1/images/jobs/{second['id']}").json()["status"] == "cancelled"
    finally:
        set_latency(emulator, 0.0)
    assert len(emulator.calls()) == 1


def test_a_job_waiting_for_an_account_slot_is_cancelled_unsent_and_frees_its_quota(
    make_proxy, emulator, tmp_path
):
    # One account with one slot, and alice may make two images a day. Job A takes the slot;
    # job B is taken by a worker that waits for the slot, holding alice's second image.
    from test_keys import ALICE, TEAM, bearer, keys_toml

    keys = tmp_path / "keys.toml"
    keys.write_text(keys_toml(*TEAM))
    proxy = make_proxy(
        api_keys_file=keys, accounts=emulator.account_configs()[:1], account_concurrency=1
    )
    set_latency(emulator, 2.0)
    try:
        with httpx.Client(base_url=proxy.url, headers=bearer(ALICE), timeout=30) as http:
            body = {"prompt": "slow", "response_format": "b64_json", "size": "256x256"}
            first = http.post("/v1/images/generations", json=body, headers=ASYNC).json()
            wait_for_status(http, first["id"], {"in_progress"})
            second = http.post("/v1/images/generations", json=body, headers=ASYNC).json()
            time.sleep(0.5)  # a free worker has taken B by now and waits for the slot
            assert len(emulator.calls()) == 1
            assert http.get(f"/v1/images/jobs/{second['id']}").json()["status"] == "queued"

            cancelled = http.delete(f"/v1/images/jobs/{second['id']}")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"

            assert wait_for_status(http, first["id"], {"completed", "failed"})["status"] == (
                "completed"
            )
            time.sleep(0.5)  # the slot is free: a worker still holding B would send it now
            assert http.get(f"/v1/images/jobs/{second['id']}").json()["status"] == "cancelled"
            assert len(emulator.calls()) == 1
            # B's hold on alice's quota was given back: her second image of the day is made.
            client = openai.OpenAI(base_url=proxy.base_url, api_key=ALICE, max_retries=0)
            made = client.images.generate(prompt="after", size="256x256")
            assert made.data[0].b64_json
    finally:
        set_latency(emulator, 0.0)
    assert len(emulator.calls()) == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "size": "7x7"}, "size"),
        ({"prompt": "x", "n": 50}, "n"),
        ({"prompt": "x", "stream": True}, "stream"),
        ({"prompt": "x", "model": "no-such-model"}, "model"),
    ],
)
def test_bad_input_is_a_400_and_nothing_is_queued(proxy, http, emulator, body, param):
    response = http.post("/v1/images/generations", json=body, headers=ASYNC)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert "location" not in response.headers
    assert emulator.calls() == []
    # Nothing was queued: the first good job is the first one submitted.
    good = http.post("/v1/images/generations", json={"prompt": "x"}, headers=ASYNC)
    assert good.status_code == 202
    assert 'flux_proxy_jobs_total{event="submitted"} 1.0' in http.get("/metrics").text


def test_an_unknown_job_is_404_in_the_openai_shape(http):
    for method in ("GET", "DELETE"):
        response = http.request(method, "/v1/images/jobs/imgjob_0123456789abcdef")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"


def test_jobs_need_an_api_key(proxy):
    assert httpx.get(proxy.base_url + "/images/jobs/imgjob_x").status_code == 401


def test_without_the_preference_the_answer_stays_synchronous(proxy, http):
    response = http.post(
        "/v1/images/generations",
        json={"prompt": "x", "response_format": "b64_json"},
        headers={"Prefer": "return=minimal"},
    )
    assert response.status_code == 200
    assert response.json()["object"] == "image.generation"


def test_an_admin_key_reads_a_job_another_admin_key_made(make_proxy):
    # API_MASTER_KEY="k1,k2": callers master and master-2, both admins, who read everyone's.
    proxy = make_proxy(api_master_key=f"{API_KEY},{SECOND_KEY}")
    first = httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "x", "response_format": "b64_json"},
        headers={**proxy.auth, **ASYNC},
    ).json()
    other = httpx.get(
        f"{proxy.base_url}/images/jobs/{first['id']}",
        headers={"Authorization": f"Bearer {SECOND_KEY}"},
    )
    assert other.status_code == 200 and other.json()["id"] == first["id"]


USER_KEYS = {
    "alice": "fpx-alice-jobs-" + "a" * 26,
    "bob": "fpx-bob-jobs-" + "b" * 28,
    "root": "fpx-root-jobs-" + "r" * 27,
}


@pytest.fixture
def users_proxy(make_proxy, tmp_path):
    """Named keys (API_KEYS_FILE): alice and bob are users, root is an admin."""
    tables = []
    for name, key in USER_KEYS.items():
        role = "admin" if name == "root" else "user"
        digest = hashlib.sha256(key.encode()).hexdigest()
        tables.append(f'[[keys]]\nname = "{name}"\nkey_sha256 = "{digest}"\nrole = "{role}"\n')
    path = tmp_path / "keys.toml"
    path.write_text("\n".join(tables))
    return make_proxy(api_keys_file=path)


def as_user(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {USER_KEYS[name]}"}


def test_a_job_read_or_cancelled_by_another_user_is_404(users_proxy, emulator):
    set_latency(emulator, 1.0)
    try:
        with httpx.Client(base_url=users_proxy.url, timeout=30) as http:
            made = http.post(
                "/v1/images/generations",
                json={"prompt": "mine", "response_format": "b64_json"},
                headers={**ASYNC, **as_user("alice")},
            ).json()
            path = f"/v1/images/jobs/{made['id']}"
            for method in ("GET", "DELETE"):
                other = http.request(method, path, headers=as_user("bob"))
                assert other.status_code == 404
                assert other.json()["error"]["code"] == "job_not_found"
            assert http.get(path, headers=as_user("root")).status_code == 200
            job = wait_for_status_as(http, path, "alice")
            assert job["status"] == "completed"
    finally:
        set_latency(emulator, 0.0)


def wait_for_status_as(http: httpx.Client, path: str, who: str, deadline=30.0):
    end = time.monotonic() + deadline
    while True:
        job = http.get(path, headers=as_user(who)).json()
        if job["status"] in ("completed", "failed") or time.monotonic() > end:
            return job
        time.sleep(0.05)


def test_a_resent_async_post_with_the_same_idempotency_key_pays_once(http, emulator):
    # A 202 lost on the way back and the POST sent again: two jobs, one upstream call.
    headers = {**ASYNC, "Idempotency-Key": "order-1234"}
    body = {"prompt": "one image only", "response_format": "b64_json"}
    first = http.post("/v1/images/generations", json=body, headers=headers).json()
    second = http.post("/v1/images/generations", json=body, headers=headers).json()
    assert first["id"] != second["id"]
    done = [wait_for_status(http, j["id"], {"completed", "failed"}) for j in (first, second)]
    assert [j["status"] for j in done] == ["completed", "completed"], done
    assert done[0]["result"]["id"] == done[1]["result"]["id"]
    assert done[0]["result"]["data"] == done[1]["result"]["data"]
    assert len(emulator.calls()) == 1


def test_an_invalid_idempotency_key_is_refused_before_queueing(http, emulator):
    response = http.post(
        "/v1/images/generations",
        json={"prompt": "x"},
        headers={**ASYNC, "Idempotency-Key": "k" * 300},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert emulator.calls() == []


def test_a_job_that_cannot_be_made_fails_with_the_openai_error(http, emulator):
    # Every account says its daily allocation is spent: the job fails, it does not hang.
    emulator.fault(account=None, status=429, code=3036)
    made = http.post(
        "/v1/images/generations", json={"prompt": "x", "response_format": "b64_json"}, headers=ASYNC
    )
    assert made.status_code == 202
    job = wait_for_status(http, made.json()["id"], {"completed", "failed"})
    assert job["status"] == "failed"
    assert job["result"] is None and job["completed_at"] is not None
    assert set(job["error"]) == {"message", "type", "param", "code"}
    assert job["error"]["type"] == "rate_limit_error"


def test_a_finished_job_is_forgotten_after_its_result_ttl(proxy, http):
    made = http.post(
        "/v1/images/generations", json={"prompt": "x", "response_format": "b64_json"}, headers=ASYNC
    ).json()
    assert wait_for_status(http, made["id"], {"completed"})["status"] == "completed"
    proxy.clock.advance(proxy.settings.job_result_ttl_seconds - 1)
    assert http.get(f"/v1/images/jobs/{made['id']}").status_code == 200
    proxy.clock.advance(2)
    gone = http.get(f"/v1/images/jobs/{made['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"


def test_a_variation_job_is_made_as_a_variation(http, png, emulator):
    response = http.post(
        "/v1/images/variations",
        data={"response_format": "b64_json"},
        files={"image": ("in.png", png(64, 64), "image/png")},
        headers=ASYNC,
    )
    assert response.status_code == 202, response.text
    job = wait_for_status(http, response.json()["id"], {"completed", "failed"})
    assert job["status"] == "completed", job
    assert len(emulator.calls()) == 1
    sync = http.post(
        "/v1/images/variations",
        data={"response_format": "b64_json"},
        files={"image": ("in.png", png(64, 64), "image/png")},
    )
    assert sync.status_code == 200
    # The worker validated it as a variation: the same prompt went upstream both times.
    prompts = [call["fields"].get("prompt") for call in emulator.calls()]
    assert prompts[0] == prompts[1] and prompts[0]
