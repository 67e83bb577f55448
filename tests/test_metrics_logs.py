"""What operators see: `/metrics`, the JSON log lines and `/health`, after real traffic through a
real `flux-proxy serve` process and the emulator process.

One scripted run (the `observed` fixture) drives a proxy through a 3036 park, skips, a bad
request, a timeout that may have been billed, and a slow call; each test then checks one
view of it against what really happened (the emulator's own call log included).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import httpx
import pytest
from procs import (
    ACCOUNTS,
    API_KEY,
    Emulator,
    Proxy,
    account_id,
    launch_proxy,
    ready,
    shared_emulator,
)
from prometheus_client.parser import text_string_to_metric_families

from flux_proxy.clock import FrozenClock, iso, next_utc_midnight
from flux_proxy.logs import SERVER_LOGGERS, configure_logging, log_event
from flux_proxy.models import find_model
from flux_proxy.pool import account_key
from flux_proxy.store.base import Block
from flux_proxy.store.memory import MemoryStore

MODEL = "flux-2-klein-4b"
SMALL = {"model": MODEL, "size": "256x256", "response_format": "b64_json"}
ESTIMATE = find_model(MODEL).estimate_neurons(256, 256, None, ())
PROMPT_MARKER = "zebra-kayak-PROMPT-7c1e"
GENERATIONS = "/v1/images/generations"


@dataclass
class Observed:
    proxy: Proxy
    emulator_calls: dict[int, list[dict]]
    responses: dict[str, httpx.Response]
    in_flight_during_slow_call: float
    metrics: dict[tuple[str, tuple], float]
    health: dict
    output: str
    logs: list[dict]
    chatty_output: str
    chatty_logs: list[dict]


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value} from Prometheus text."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> Observed:
    emulator = shared_emulator()
    work = tmp_path_factory.mktemp("observed")
    quiet = launch_proxy(
        work / "quiet",
        emulator,
        STATE_BACKEND="sqlite",
        DATA_DIR=work / "data",
        UPSTREAM_READ_TIMEOUT=1,
    )
    chatty = launch_proxy(work / "chatty", emulator, STATE_BACKEND="memory", LOG_PROMPTS="true")
    try:
        ready(quiet, chatty)
        chatty_answer = chatty.generate(
            prompt=f"a {PROMPT_MARKER}", headers={"x-request-id": "chatty-1"}, **SMALL
        )
        assert chatty_answer.status_code == 200, chatty_answer.text
        emulator.reset()
        yield run_traffic(quiet, emulator, chatty)
    finally:
        quiet.proc.stop()
        chatty.proc.stop()


def run_traffic(proxy: Proxy, emulator: Emulator, chatty: Proxy) -> Observed:
    responses: dict[str, httpx.Response] = {}

    def send(request_id: str, **body) -> httpx.Response:
        body = {"prompt": f"a {PROMPT_MARKER}", **SMALL, **body}
        response = proxy.generate(headers={"x-request-id": request_id}, **body)
        responses[request_id] = response
        return response

    # obs-1: account 1 answers 3036 and is parked; account 2 makes the image.
    emulator.fault(account=account_id(1), status=429, code=3036, count=1)
    assert send("obs-1").status_code == 200
    # obs-2: two images, both on account 2; account 1 skipped twice without a call.
    assert send("obs-2", n=2).status_code == 200
    # obs-3: refused before any account is tried.
    assert send("obs-3", size="13x13").status_code == 400
    # obs-4: account 2 does not answer within the 1 s read timeout (it may still bill the
    # call); account 3 makes the image.
    emulator.fault(account=account_id(2), kind="timeout", latency=1.5, count=1)
    assert send("obs-4").status_code == 200
    # obs-5: a slow call, to catch it in flight.
    emulator.config(latency=0.8)
    slow = threading.Thread(target=send, args=("obs-5",))
    slow.start()
    in_flight = 0.0
    deadline = time.monotonic() + 5
    while slow.is_alive() and time.monotonic() < deadline:
        gauge = value(parse_metrics(proxy.metrics()), "flux_proxy_in_flight_requests")
        in_flight = max(in_flight, gauge or 0.0)
        time.sleep(0.05)
    slow.join()
    emulator.config(latency=0.0)
    assert responses["obs-5"].status_code == 200

    return Observed(
        proxy=proxy,
        emulator_calls={n: emulator.calls(n) for n, _, _ in ACCOUNTS},
        responses=responses,
        in_flight_during_slow_call=in_flight,
        metrics=parse_metrics(proxy.metrics()),
        health=proxy.health(),
        output=proxy.proc.output(),
        logs=proxy.log_lines(),
        chatty_output=chatty.proc.output(),
        chatty_logs=chatty.log_lines(),
    )


# --- /metrics ------------------------------------------------------------------


def test_metrics_count_requests_by_route_and_status(observed):
    m = observed.metrics
    assert value(m, "flux_proxy_http_requests_total", route=GENERATIONS, status="200") == 4
    assert value(m, "flux_proxy_http_requests_total", route=GENERATIONS, status="400") == 1
    assert value(m, "flux_proxy_http_request_seconds_count", route=GENERATIONS) == 5
    total = value(m, "flux_proxy_http_request_seconds_sum", route=GENERATIONS)
    assert total >= 1.0 + 0.8  # the timeout on obs-4 and the slow call of obs-5


def test_metrics_count_upstream_calls_by_account_outcome_and_code(observed):
    m = observed.metrics

    def calls(account: str, outcome: str, code: str = "") -> float | None:
        return value(
            m,
            "flux_proxy_upstream_calls_total",
            account=account,
            model=MODEL,
            outcome=outcome,
            cf_code=code,
        )

    assert calls("1", "quota_exhausted", "3036") == 1
    assert calls("2", "success") == 4  # obs-1, obs-2 twice, obs-5
    assert calls("2", "transient") == 1  # obs-4's timeout
    assert calls("3", "success") == 1
    # The counters agree with what the emulator itself received, account by account.
    for number, received in observed.emulator_calls.items():
        counted = sum(
            v
            for (name, labels), v in m.items()
            if name == "flux_proxy_upstream_calls_total" and ("account", str(number)) in labels
        )
        assert counted == len(received), number
    upstream = "flux_proxy_upstream_seconds"
    assert value(m, upstream + "_count", account="2", model=MODEL) == 5
    assert value(m, upstream + "_sum", account="2", model=MODEL) >= 1.0 + 0.8


def test_metrics_neurons_images_and_duplicate_spend_match_what_was_made(observed):
    m = observed.metrics
    health = {entry["number"]: entry for entry in observed.health["accounts"]}
    neurons_2 = value(m, "flux_proxy_neurons_total", account="2", model=MODEL)
    # Four images plus the timed-out call, counted at its estimate because it may be billed.
    assert neurons_2 == pytest.approx(5 * ESTIMATE, abs=0.05)
    assert neurons_2 == pytest.approx(health[2]["neurons_used_today"], abs=0.05)
    assert value(m, "flux_proxy_neurons_total", account="3", model=MODEL) == pytest.approx(
        ESTIMATE, abs=0.01
    )
    assert value(m, "flux_proxy_neurons_total", account="1", model=MODEL) is None  # 3036: free
    assert value(m, "flux_proxy_duplicate_spend_total", account="2", model=MODEL) == 1
    assert value(m, "flux_proxy_duplicate_spend_total", account="3", model=MODEL) is None
    images = value(m, "flux_proxy_images_total", model=MODEL, response_format="b64_json")
    made = sum(len(r.json()["data"]) for r in observed.responses.values() if r.status_code == 200)
    assert images == made == 5


def test_metrics_show_account_states_skips_and_in_flight_requests(observed):
    m = observed.metrics
    state = "flux_proxy_account_state"
    assert value(m, state, account="1", state="parked") == 1
    assert value(m, state, account="1", state="available") == 0
    assert value(m, state, account="2", state="available") == 1
    assert value(m, state, account="3", state="available") == 1
    # obs-2 (two images), obs-4 and obs-5 each passed account 1 over without a call.
    assert value(m, "flux_proxy_accounts_skipped_total", account="1", reason="parked") == 4
    # The slow call and the /metrics request that saw it; afterwards only /metrics itself.
    assert observed.in_flight_during_slow_call == 2
    assert value(m, "flux_proxy_in_flight_requests") == 1


def test_metrics_show_a_stored_park_before_any_traffic(make_proxy, emulator):
    clock = FrozenClock(time.time())
    store = MemoryStore(clock)
    account = emulator.account_configs()[0]
    until = next_utc_midnight(clock.now())
    asyncio.run(store.set_block(account_key(account), Block("parked", until, "spent", 3036)))
    proxy = make_proxy(clock=clock, store=store)

    metrics = parse_metrics(httpx.get(proxy.url + "/metrics", timeout=10).text)

    assert value(metrics, "flux_proxy_account_state", account="1", state="parked") == 1


# --- logs ------------------------------------------------------------------


def _lines(observed: Observed, request_id: str, event: str) -> list[dict]:
    return [
        line
        for line in observed.logs
        if line.get("request_id") == request_id and line.get("event") == event
    ]


def test_one_json_line_per_request_with_its_outcome(observed):
    for request_id, response in observed.responses.items():
        [line] = _lines(observed, request_id, "request")
        assert line["status"] == response.status_code
        assert line["route"] == GENERATIONS
        assert line["method"] == "POST"
        assert line["latency_ms"] >= 0
        assert response.headers["x-request-id"] == request_id
    assert _lines(observed, "obs-1", "request")[0]["account"] == 2
    assert _lines(observed, "obs-4", "request")[0]["account"] == 3
    assert _lines(observed, "obs-1", "request")[0]["model"] == MODEL


def test_a_refused_request_logs_its_error_code(observed):
    """A 429 may be the key's quota or the pool's spent accounts, a 400 any parameter: the
    operator reading the line must see which, as the caller did."""
    [line] = _lines(observed, "obs-3", "request")
    assert line["code"] == observed.responses["obs-3"].json()["error"]["code"]
    assert line["code"]
    assert "code" not in _lines(observed, "obs-1", "request")[0]


def test_one_json_line_per_upstream_attempt_with_account_code_latency_and_neurons(observed):
    first = _lines(observed, "obs-1", "upstream_attempt")
    assert [(a["account"], a["outcome"], a["cf_code"]) for a in first] == [
        (1, "quota_exhausted", 3036),
        (2, "success", None),
    ]
    for attempt in first:
        assert attempt["model"] == MODEL
        assert (attempt["width"], attempt["height"], attempt["steps"]) == (256, 256, 4)
        assert attempt["latency_ms"] >= 0
    assert first[1]["neurons"] == pytest.approx(ESTIMATE, abs=0.01)
    assert len(_lines(observed, "obs-2", "upstream_attempt")) == 2  # account 1 skipped
    assert _lines(observed, "obs-3", "upstream_attempt") == []
    timed_out, served = _lines(observed, "obs-4", "upstream_attempt")
    assert (timed_out["account"], timed_out["outcome"]) == (2, "transient")
    assert timed_out["maybe_billed"] is True
    assert timed_out["latency_ms"] >= 900
    assert (served["account"], served["outcome"]) == (3, "success")


def test_logs_hold_no_token_key_image_or_prompt(observed):
    output = observed.output
    for _, _, token in ACCOUNTS:
        assert token not in output
    assert API_KEY not in output
    assert PROMPT_MARKER not in output  # LOG_PROMPTS is off
    assert "iVBORw0KGgo" not in output  # the start of any base64 PNG
    for response in observed.responses.values():
        if response.status_code == 200:
            for item in response.json()["data"]:
                assert item["b64_json"][100:164] not in output
    for _, full_id, _ in ACCOUNTS:
        assert full_id not in output  # logs name accounts by N


def test_prompts_are_logged_only_when_enabled(observed):
    [prompt] = [line for line in observed.chatty_logs if line.get("event") == "prompt"]
    assert prompt["request_id"] == "chatty-1"
    assert PROMPT_MARKER in prompt["prompt"]
    for _, _, token in ACCOUNTS:
        assert token not in observed.chatty_output
    assert API_KEY not in observed.chatty_output


def test_every_output_line_is_json_when_log_format_is_json(observed):
    lines = [line for line in observed.output.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines[:3]


def test_configure_logging_writes_server_lines_as_json_too(capsys):
    import json

    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate)
        for name in ("flux_proxy", *SERVER_LOGGERS)
        for lg in [logging.getLogger(name)]
    }
    try:
        configure_logging("json")
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
        log_event("upstream_attempt", account=2, token="tok-LEAK", api_key="k-LEAK")
    finally:
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
    server, attempt = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert server["event"] == "server"
    assert server["message"] == "Started server process [42]"
    assert attempt["event"] == "upstream_attempt" and attempt["account"] == 2
    assert "token" not in attempt and "api_key" not in attempt


# --- /health ------------------------------------------------------------------


def test_health_shows_each_account_state_budget_and_store(observed):
    health = observed.health
    assert health["status"] == "ok"
    assert health["store"]["backend"] == "sqlite" and health["store"]["ok"] is True
    midnight = iso(next_utc_midnight(time.time()))
    accounts = {entry["number"]: entry for entry in health["accounts"]}
    assert sorted(accounts) == [1, 2, 3]
    for number, full_id, _ in ACCOUNTS:
        entry = accounts[number]
        assert entry["account"] == f"{full_id[:4]}…{full_id[-4:]}"
        assert entry["next_reset"] == midnight
        assert entry["daily_budget"] == 10_000
        assert entry["in_flight"] == 0
    parked = accounts[1]
    assert (parked["state"], parked["until"], parked["code"]) == ("parked", midnight, 3036)
    assert parked["last_error_code"] == 3036
    assert parked["neurons_used_today"] == 10_000  # Cloudflare said the day's allocation is gone
    assert parked["neurons_remaining_today"] == 0
    for number in (2, 3):
        entry = accounts[number]
        assert entry["state"] == "available" and entry["until"] is None
        used = entry["neurons_used_today"]
        assert used > 0
        assert entry["neurons_remaining_today"] == pytest.approx(10_000 - used, abs=0.01)
    body = httpx.get(observed.proxy.url + "/health", timeout=10).text
    for _, full_id, token in ACCOUNTS:
        assert full_id not in body and token not in body


def test_live_and_ready_when_accounts_can_serve(observed):
    live = httpx.get(observed.proxy.url + "/health/live", timeout=10)
    ready_answer = httpx.get(observed.proxy.url + "/health/ready", timeout=10)
    assert (live.status_code, live.json()["status"]) == (200, "alive")
    assert (ready_answer.status_code, ready_answer.json()["status"]) == (200, "ready")


def test_when_no_account_can_serve_health_is_degraded_ready_and_live_hold(make_proxy, emulator):
    """Spent accounts are the shared pool's: every replica is in the same position, and a
    balancer that took them all out would hide the 429's Retry-After and every job, batch
    and file a caller polls until 00:00 UTC. /health says degraded; ready stays 200."""
    clock = FrozenClock(time.time())
    proxy = make_proxy(clock=clock, accounts=emulator.account_configs()[:1])
    emulator.fault(account=emulator.account_id(1), status=429, code=3036, count=1)
    refused = httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "a heron", "size": "256x256"},
        headers=proxy.auth,
        timeout=30,
    )
    assert refused.status_code == 429

    health = httpx.get(proxy.url + "/health", timeout=10)
    midnight = iso(next_utc_midnight(clock.now()))
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"
    assert midnight in health.json()["reason"]
    ready_answer = httpx.get(proxy.url + "/health/ready", timeout=10)
    assert (ready_answer.status_code, ready_answer.json()["status"]) == (200, "ready")
    assert midnight in ready_answer.json()["reason"]
    assert httpx.get(proxy.url + "/health/live", timeout=10).status_code == 200


def test_ready_fails_when_every_token_is_refused(make_proxy, emulator):
    """A configuration no day fixes (a rollout with bad tokens) must not take traffic."""
    proxy = make_proxy(accounts=emulator.account_configs()[:1])
    emulator.fault(account=emulator.account_id(1), status=401, code=10000)
    refused = httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "a heron", "size": "256x256"},
        headers=proxy.auth,
        timeout=30,
    )
    assert refused.status_code == 503
    ready_answer = httpx.get(proxy.url + "/health/ready", timeout=10)
    assert (ready_answer.status_code, ready_answer.json()["status"]) == (503, "not_ready")
    assert "disabled" in ready_answer.json()["reason"]
