"""Every fault the emulator can inject × one and three accounts: what the caller sees (status,
error code, Retry-After) and exactly how many upstream calls each account received, for the
faulted request and for the request after it (parked, cooling and disabled accounts get none).

Three layouts:
- `one`: a single account, which fails once;
- `first`: three accounts, account 1 fails once (the pool must fail over, or not, as the kind
  demands);
- `all`: three accounts, each fails once.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from reliability import add_fault, assert_openai_error, emulator_calls, generate, reset_emulator

from flux_proxy.clock import next_utc_midnight

READ_TIMEOUT = 0.4  # UPSTREAM_READ_TIMEOUT for the real-timeout rows


@dataclass(frozen=True)
class Fault:
    name: str
    rule: dict[str, Any]  # an emulator fault rule, minus account and count
    behaviour: str  # park | cool | disable | model | transient | input
    status: int  # what the caller gets when no account is left
    code: str
    retry_after: str | None = None  # "midnight", or the exact seconds expected
    settings: dict[str, Any] = field(default_factory=dict)


FAULTS = [
    Fault(
        "allocation_3036",
        {"status": 429, "code": 3036},
        "park",
        429,
        "accounts_exhausted",
        "midnight",
    ),
    Fault(
        "allocation_4006",
        {"status": 429, "code": 4006},
        "park",
        429,
        "accounts_exhausted",
        "midnight",
    ),
    Fault("capacity_3040", {"status": 429, "code": 3040}, "cool", 429, "accounts_exhausted", "15"),
    Fault(
        "rate_limit_retry_after",
        {"status": 429, "code": 971, "retry_after": 7},
        "cool",
        429,
        "accounts_exhausted",
        "7",
    ),
    Fault(
        "rate_limit_no_retry_after",
        {"status": 429, "code": 971},
        "cool",
        429,
        "accounts_exhausted",
        "60",
    ),
    Fault("server_error_500", {"status": 500}, "transient", 502, "upstream_unavailable"),
    Fault(
        "server_error_503", {"status": 503, "code": 3043}, "transient", 502, "upstream_unavailable"
    ),
    Fault("timeout_code_408", {"status": 408}, "transient", 502, "upstream_unavailable"),
    Fault(
        "real_timeout",
        {"kind": "timeout", "latency": 5.0},
        "transient",
        502,
        "upstream_unavailable",
        settings={"upstream_read_timeout": READ_TIMEOUT},
    ),
    Fault("dropped_connection", {"kind": "drop"}, "transient", 502, "upstream_unavailable"),
    Fault("garbage_body", {"kind": "garbage"}, "transient", 502, "upstream_unavailable"),
    Fault("success_without_image", {"kind": "no_image"}, "transient", 502, "upstream_unavailable"),
    Fault("auth_10000", {"status": 401}, "disable", 503, "no_usable_account"),
    Fault(
        "model_unavailable_5035", {"status": 403, "code": 5035}, "model", 503, "model_unavailable"
    ),
    Fault("private_model_5018", {"status": 403, "code": 5018}, "model", 503, "model_unavailable"),
    Fault("private_model_3041", {"status": 403, "code": 3041}, "model", 503, "model_unavailable"),
    Fault(
        "terms_not_accepted_5016",
        {"status": 403, "code": 5016},
        "model",
        503,
        "model_unavailable",
    ),
    Fault("input_error_5006", {"status": 400}, "input", 400, "upstream_rejected_input"),
    Fault(
        "request_invalid_3039",
        {"status": 400, "code": 3039},
        "input",
        400,
        "upstream_rejected_input",
    ),
    # Refused request forms: the proxy's fault, the same on every account, so no failover.
    Fault(
        "deprecated_sdk_405_5019",
        {"status": 405, "code": 5019},
        "input",
        502,
        "upstream_configuration_error",
    ),
    Fault(
        "lora_unsupported_405_5005",
        {"status": 405, "code": 5005},
        "input",
        502,
        "upstream_configuration_error",
    ),
    Fault("too_large_3006", {"status": 413}, "input", 413, "upstream_rejected_input"),
]

LAYOUTS = {"one": ((1,), (1,)), "first": ((1, 2, 3), (1,)), "all": ((1, 2, 3), (1, 2, 3))}
BLOCKING = {"park", "cool", "disable", "model"}


def _expected_first(fault: Fault, accounts: tuple[int, ...], faulty: tuple[int, ...]):
    """(status, calls per account) of the faulted request."""
    if fault.behaviour == "input":  # the caller's fault: no other account is tried
        return fault.status, {1: 1}
    healthy = [n for n in accounts if n not in faulty]
    if healthy:  # fail over through the faulty ones to the first healthy one
        return 200, {**dict.fromkeys(faulty, 1), healthy[0]: 1}
    return fault.status, dict.fromkeys(faulty, 1)


def _expected_follow_up(fault: Fault, accounts: tuple[int, ...], faulty: tuple[int, ...]):
    """(status, calls per account) of the next request, every fault rule now spent."""
    if fault.behaviour not in BLOCKING:
        return 200, {1: 1}  # nothing was learned that would skip account 1
    healthy = [n for n in accounts if n not in faulty]
    if healthy:
        return 200, {healthy[0]: 1}
    return fault.status, {}  # every account is parked/cooling/disabled: no call at all


def _calls_per_account(emulator) -> dict[int, int]:
    numbers = {account_id: n for n, account_id, _ in emulator.accounts}
    return dict(Counter(numbers[c["account"]] for c in emulator_calls(emulator)))


def _check_outcome(response: httpx.Response, fault: Fault, status: int, proxy) -> None:
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["data"][0]["b64_json"]
        assert "retry-after" not in response.headers
        return
    error = assert_openai_error(status, response.json(), response.headers)
    assert error["code"] == fault.code, error
    retry_after = response.headers.get("retry-after")
    if fault.retry_after is None:
        assert retry_after is None, response.headers
        return
    if fault.retry_after == "midnight":
        now = proxy.clock.now()
        expected = str(max(1, math.ceil(next_utc_midnight(now) - now)))
        assert response.headers.get("x-should-retry") == "false"  # hours away: don't retry
    else:
        expected = fault.retry_after
        assert "x-should-retry" not in response.headers
    assert retry_after == expected, response.headers


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_outcome_and_exact_upstream_calls(fault: Fault, layout: str, make_proxy, emulator):
    accounts, faulty = LAYOUTS[layout]
    configs = [a for a in emulator.account_configs() if a.number in accounts]
    proxy = make_proxy(accounts=configs, **fault.settings)
    for number in faulty:
        add_fault(emulator, account=emulator.account_id(number), count=1, **fault.rule)

    status, calls = _expected_first(fault, accounts, faulty)
    _check_outcome(generate(proxy), fault, status, proxy)
    assert _calls_per_account(emulator) == calls

    reset_emulator(
        emulator
    )  # a fresh call log (the rules fired already; the proxy keeps what it learned)
    status, calls = _expected_follow_up(fault, accounts, faulty)
    _check_outcome(generate(proxy), fault, status, proxy)
    assert _calls_per_account(emulator) == calls
