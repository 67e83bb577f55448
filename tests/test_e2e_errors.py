"""End to end: failover that remembers, errors that stay OpenAI-shaped, auth, CORS and logs.

Exact upstream call counts come from the emulator's call log.
"""

from __future__ import annotations

import logging
import time

import httpx
import openai
import pytest

GENERATE = "/images/generations"
SMALL = {"prompt": "a cat", "width": 256, "height": 256}


def post(proxy, body=None, headers=None, **kwargs) -> httpx.Response:
    return httpx.post(
        proxy.base_url + GENERATE,
        json=SMALL if body is None else body,
        headers=proxy.auth if headers is None else headers,
        timeout=60,
        **kwargs,
    )


def test_spent_account_fails_over_and_is_not_called_again(proxy, emulator):
    first = emulator.account_id(1)
    emulator.fault(account=first, status=429, code=3036)
    response = post(proxy)
    assert response.status_code == 200, response.text
    assert response.json()["account_used"] == 2
    assert len(emulator.calls(first)) == 1
    assert len(emulator.calls(emulator.account_id(2))) == 1

    second = post(proxy)
    assert second.status_code == 200
    assert second.json()["account_used"] == 2
    assert len(emulator.calls(first)) == 1  # parked: the next request made zero calls to it
    health = httpx.get(proxy.url + "/health", headers=proxy.auth).json()
    assert health["accounts"][0]["state"] == "parked"
    assert health["status"] == "ok"


def test_input_error_goes_straight_back_as_400_after_one_call(proxy, emulator):
    emulator.fault(status=400, code=5006, message="Invalid input: width must be a multiple of 16")
    response = post(proxy)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert len(emulator.calls()) == 1


def test_every_account_spent_is_429_with_retry_after_and_health_503_ready_200(proxy, emulator):
    emulator.fault(status=429, code=3036)
    with pytest.raises(openai.RateLimitError) as caught:
        openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key, max_retries=0).images.generate(
            prompt="a cat", size="256x256"
        )
    assert int(caught.value.response.headers["retry-after"]) > 0
    assert len(emulator.calls()) == 3
    health = httpx.get(proxy.url + "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert httpx.get(proxy.url + "/health/ready").status_code == 200  # shared, not this replica
    post(proxy)
    assert len(emulator.calls()) == 3  # remembered: no account is tried again today


@pytest.mark.parametrize(
    "rule, status, code",
    [
        ({"status": 405, "code": 5019}, 502, "upstream_configuration_error"),
        ({"status": 401}, 503, "no_usable_account"),
        ({"status": 403, "code": 5016}, 503, "model_unavailable"),
    ],
    ids=["refused-request-form", "every-token-rejected", "model-unavailable-everywhere"],
)
def test_failures_a_retry_cannot_change_tell_the_sdk_not_to_retry(
    proxy, emulator, rule, status, code
):
    # The openai SDK retries >= 500 twice by default. A request form Cloudflare refuses is
    # refused on every account (each retry another call), and disabled accounts or a model no
    # account serves stay so for far longer than the SDK's backoff: one answer is enough.
    emulator.fault(**rule)
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key=proxy.key)  # default retries
    with sdk, pytest.raises(openai.InternalServerError) as caught:
        sdk.images.generate(prompt="a cat", size="256x256")
    assert caught.value.status_code == status and caught.value.body["code"] == code
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.request.headers["x-stainless-retry-count"] == "0"
    assert len(emulator.calls()) == (1 if code == "upstream_configuration_error" else 3)


def test_upstream_failure_never_shows_cloudflares_text_or_a_token(proxy, emulator):
    emulator.fault(status=500, message="UPSTREAM-INTERNAL-DETAIL at host xyz")
    response = post(proxy)
    assert response.status_code in (502, 503)
    assert "UPSTREAM-INTERNAL-DETAIL" not in response.text
    for _, account_id, token in emulator.accounts:
        assert token not in response.text and account_id not in response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": "Bearer"},
        {"Authorization": "test-key-0123456789abcdef"},
    ],
    ids=["missing", "wrong", "basic", "empty", "no-scheme"],
)
def test_requests_without_a_valid_key_are_401_and_never_reach_upstream(proxy, emulator, headers):
    response = post(proxy, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"]
    assert emulator.calls() == []
    models = httpx.get(proxy.base_url + "/models", headers=headers)
    assert models.status_code == 401


def test_bearer_scheme_is_case_insensitive(proxy):
    assert post(proxy, headers={"Authorization": f"bearer {proxy.key}"}).status_code == 200
    assert post(proxy, headers={"authorization": f"BEARER {proxy.key}"}).status_code == 200


def test_any_of_several_keys_is_accepted(make_proxy):
    proxy = make_proxy(api_master_key="first-key-123,second-key-456")
    for key in ("first-key-123", "second-key-456"):
        assert post(proxy, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    both = "first-key-123,second-key-456"
    assert post(proxy, headers={"Authorization": f"Bearer {both}"}).status_code == 401


def test_health_page_and_image_files_need_no_key(proxy):
    assert httpx.get(proxy.url + "/health").status_code == 200
    assert httpx.get(proxy.url + "/health/live").status_code == 200
    missing = httpx.get(proxy.base_url + "/images/files/" + "A" * 32 + ".png")
    assert missing.status_code == 404  # not 401: the unguessable name is the credential


def test_no_auth_mode_serves_without_a_key(make_proxy):
    proxy = make_proxy(api_master_key=None, no_auth=True)
    assert post(proxy, headers={}).status_code == 200


def test_no_key_configured_and_auth_on_refuses_everyone(make_proxy):
    proxy = make_proxy(api_master_key=None)
    assert post(proxy, headers={}).status_code == 401
    assert post(proxy, headers={"Authorization": "Bearer anything"}).status_code == 401


# --- request ids, CORS, logs ---------------------------------------------------------------------


def test_x_request_id_on_success_and_on_every_kind_of_error(proxy):
    responses = [
        post(proxy),
        post(proxy, body={"prompt": 5}),
        post(proxy, headers={}),
        httpx.get(proxy.url + "/nowhere"),
        httpx.delete(proxy.url + "/health"),
    ]
    assert [r.status_code for r in responses] == [200, 400, 401, 404, 405]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids)
    echoed = post(proxy, headers={**proxy.auth, "x-request-id": "trace-abc.123"})
    assert echoed.headers["x-request-id"] == "trace-abc.123"


def test_cors_is_off_by_default(proxy):
    response = httpx.options(
        proxy.base_url + GENERATE,
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_the_configured_origins(make_proxy):
    proxy = make_proxy(cors_origins=["https://app.example"])
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    ok = httpx.options(
        proxy.base_url + GENERATE, headers={"Origin": "https://app.example", **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(
        proxy.base_url + GENERATE, headers={"Origin": "https://evil.example", **preflight}
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
    response = post(proxy, headers={**proxy.auth, "Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"


# What openai-node (6.x) sends from a browser (`dangerouslyAllowBrowser: true`) besides the
# key and the body's type: its retry count, timeout and platform headers.
OPENAI_NODE_BROWSER_HEADERS = (
    "authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, "
    "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
    "x-stainless-runtime-version, x-stainless-timeout"
)


def test_cors_lets_the_openai_sdk_in_a_browser_through_and_read_its_retry_hints(
    make_proxy, emulator
):
    proxy = make_proxy(cors_origins=["https://app.example"])
    preflight = httpx.options(
        proxy.base_url + GENERATE,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": OPENAI_NODE_BROWSER_HEADERS,
        },
    )
    assert preflight.status_code == 200, preflight.text
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in OPENAI_NODE_BROWSER_HEADERS.split(",")} <= allowed

    # The SDK obeys x-should-retry, which a browser hides from it unless it is exposed.
    emulator.fault(status=429, code=3036)
    spent = post(proxy, headers={**proxy.auth, "Origin": "https://app.example"})
    assert spent.status_code == 429 and spent.headers["x-should-retry"] == "false"
    exposed = {h.strip() for h in spent.headers["access-control-expose-headers"].split(",")}
    assert {"x-should-retry", "retry-after", "x-request-id"} <= exposed


def wait_for_log(caplog, event: str, request_id: str) -> list[logging.LogRecord]:
    """The request line is written just after the response is sent: give it a moment."""
    deadline = time.monotonic() + 5
    while True:
        lines = [
            r for r in caplog.records if getattr(r, "event", None) == event
            and r.fields.get("request_id") == request_id
        ]  # fmt: skip
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_one_log_line_per_request_without_secrets_or_prompts(proxy, emulator, caplog):
    caplog.set_level(logging.INFO, logger="flux_proxy")
    response = post(proxy, body={**SMALL, "prompt": "PRIVATE-PROMPT-TEXT"})
    request_id = response.headers["x-request-id"]
    lines = wait_for_log(caplog, "request", request_id)
    assert len(lines) == 1
    fields = lines[0].fields
    assert fields["route"] == "/v1/images/generations"
    assert fields["status"] == 200 and fields["method"] == "POST"
    assert fields["model"] == "flux-2-dev" and fields["n"] == 1 and fields["account"] == 1
    assert fields["latency_ms"] >= 0
    everything = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert proxy.key not in everything
    assert "PRIVATE-PROMPT-TEXT" not in everything
    for _, _, token in emulator.accounts:
        assert token not in everything


def test_prompts_are_logged_only_when_asked(make_proxy, caplog):
    proxy = make_proxy(log_prompts=True)
    caplog.set_level(logging.INFO, logger="flux_proxy")
    response = post(proxy, body={**SMALL, "prompt": "LOGGED-PROMPT"})
    wait_for_log(caplog, "request", response.headers["x-request-id"])
    prompts = [r for r in caplog.records if getattr(r, "event", None) == "prompt"]
    assert [r.fields["prompt"] for r in prompts] == ["LOGGED-PROMPT"]
