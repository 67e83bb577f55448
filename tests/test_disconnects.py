"""A client that goes away: what was not sent upstream yet costs nothing (its slot and neuron
reservation, its tasks and sockets are given back at once); a call that was already sent is
Workers AI working, so it runs to its end, its neurons are settled on the ledger (never
released), and then everything is given back (issue 9; the result is kept for a retry, see
tests/test_e2e_work.py).

The emulator is made slow with a `timeout` fault (it sleeps, then answers normally), the client
sends a whole request over a raw socket and closes it while the upstream call is in flight.
"""

from __future__ import annotations

import json

import httpx
import pytest
from reliability import (
    SMALL,
    connect,
    in_proxy_loop,
    open_sockets,
    proxy_tasks,
    request_head,
    wait_for,
)

from flux_proxy.clock import utc_day
from flux_proxy.pool import account_key

CALL_SECONDS = 3.0  # how long the emulator works on a faulted call before answering
RELEASE_WITHIN = 3.0  # for what was never sent
FINISHED_WITHIN = CALL_SECONDS + 10.0  # for a sent call: its end, plus a loaded machine's slack


@pytest.fixture
def one_slot_proxy(make_proxy, emulator):
    """One account with one slot, and a short wait for a slot: a leaked slot shows at once."""
    account = emulator.account_configs()[0]
    return make_proxy(
        accounts=[account], account_concurrency=1, slot_wait_seconds=0.5, daily_neurons=5000
    )


def _send_and_abandon(proxy, body: dict, *, wait_for_calls: int, emulator) -> None:
    """Send a whole JSON request, wait until the emulator has it, then close the socket."""
    payload = json.dumps(body).encode()
    sock = connect(proxy.url)
    try:
        head = request_head(
            "POST",
            "/v1/images/generations",
            {**proxy.auth, "Content-Type": "application/json", "Content-Length": str(len(payload))},
        )
        sock.sendall(head + payload)
        assert wait_for(lambda: len(emulator.calls()) >= wait_for_calls, 5), emulator.calls()
    finally:
        sock.close()


def _in_flight(proxy) -> int:
    health = httpx.get(proxy.url + "/health", headers=proxy.auth, timeout=5).json()
    return sum(account["in_flight"] for account in health["accounts"])


def _reserved(proxy) -> float:
    keys = [account_key(a) for a in proxy.settings.accounts]
    usage = in_proxy_loop(proxy, proxy.store.usage(keys, utc_day(proxy.clock.now())))
    return sum(u.reserved for u in usage.values())


def _spent(proxy) -> float:
    keys = [account_key(a) for a in proxy.settings.accounts]
    usage = in_proxy_loop(proxy, proxy.store.usage(keys, utc_day(proxy.clock.now())))
    return sum(u.used for u in usage.values())


def _settled(proxy, baseline_tasks: list[str], baseline_sockets: int, within: float) -> None:
    assert wait_for(lambda: _in_flight(proxy) == 0, within), "a slot is still held"
    assert _reserved(proxy) == 0
    assert wait_for(lambda: proxy_tasks(proxy) == baseline_tasks, within), (
        proxy_tasks(proxy),
        baseline_tasks,
    )
    assert wait_for(lambda: open_sockets() <= baseline_sockets, within), (
        open_sockets(),
        baseline_sockets,
    )


def _warm_up(proxy, emulator, n: int = 1) -> tuple[list[str], int]:
    """One served request of `n` images (opens the upstream connections that many concurrent
    calls keep alive), then the idle baseline."""
    response = httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "warm up", "n": n, **SMALL},
        headers=proxy.auth,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    emulator.reset()
    assert wait_for(lambda: _in_flight(proxy) == 0, 2)
    return proxy_tasks(proxy), open_sockets()


def _served(proxy) -> httpx.Response:
    return httpx.post(
        proxy.base_url + "/images/generations",
        json={"prompt": "after the abandoned ones", **SMALL},
        headers=proxy.auth,
        timeout=10,
    )


def test_abandoned_request_whose_call_was_sent_finishes_it_settles_it_then_gives_all_back(
    one_slot_proxy, emulator
):
    proxy = one_slot_proxy
    tasks, sockets = _warm_up(proxy, emulator)
    spent_before = _spent(proxy)
    emulator.fault(account=emulator.account_id(1), kind="timeout", latency=CALL_SECONDS, count=1)

    _send_and_abandon(
        proxy, {"prompt": "never collected", **SMALL}, wait_for_calls=1, emulator=emulator
    )

    assert _in_flight(proxy) == 1  # the caller left, the call goes on
    _settled(proxy, tasks, sockets, FINISHED_WITHIN)
    [call] = emulator.calls()
    assert call["status"] == 200
    assert _spent(proxy) - spent_before == pytest.approx(
        call["neurons"], abs=0.01
    )  # settled, not released
    response = _served(proxy)  # the one slot is free again: no 429 accounts_busy
    assert response.status_code == 200, response.text
    assert len(emulator.calls()) == 2


def test_abandoned_request_of_three_images_finishes_every_sent_call(make_proxy, emulator):
    proxy = make_proxy(account_concurrency=1, slot_wait_seconds=0.5, daily_neurons=5000)
    tasks, sockets = _warm_up(proxy, emulator, n=3)
    spent_before = _spent(proxy)
    emulator.fault(kind="timeout", latency=CALL_SECONDS, count=3)

    _send_and_abandon(
        proxy,
        {"prompt": "three never collected", "n": 3, **SMALL},
        wait_for_calls=3,
        emulator=emulator,
    )

    _settled(proxy, tasks, sockets, FINISHED_WITHIN)
    calls = emulator.calls()
    assert sorted(c["account"] for c in calls) == sorted(emulator.account_id(n) for n in (1, 2, 3))
    assert all(c["status"] == 200 for c in calls)
    assert _spent(proxy) - spent_before == pytest.approx(sum(c["neurons"] for c in calls), abs=0.01)
    response = _served(proxy)
    assert response.status_code == 200, response.text


def test_request_abandoned_while_waiting_for_a_slot_stops_waiting(one_slot_proxy, emulator):
    proxy = one_slot_proxy
    proxy.settings.slot_wait_seconds = 20.0  # long enough that only a cancel ends the wait
    tasks, sockets = _warm_up(proxy, emulator)
    emulator.fault(account=emulator.account_id(1), kind="timeout", latency=CALL_SECONDS, count=1)

    holder = connect(proxy.url)
    waiter = connect(proxy.url)
    try:
        for sock, prompt in ((holder, "holds the slot"), (waiter, "waits for it")):
            payload = json.dumps({"prompt": prompt, **SMALL}).encode()
            headers = {
                **proxy.auth,
                "Content-Type": "application/json",
                "Content-Length": str(len(payload)),
            }
            sock.sendall(request_head("POST", "/v1/images/generations", headers) + payload)
        assert wait_for(lambda: len(emulator.calls()) == 1, 5)
        assert wait_for(lambda: len(proxy_tasks(proxy)) >= len(tasks) + 2, 5)
    finally:
        waiter.close()
        holder.close()

    # The holder's call was sent and finishes; the waiter's never was, and is gone at once.
    _settled(proxy, tasks, sockets, FINISHED_WITHIN)
    assert len(emulator.calls()) == 1  # the waiter never reached Workers AI
    proxy.settings.slot_wait_seconds = 0.5
    assert _served(proxy).status_code == 200


def test_client_gone_mid_upload_costs_nothing(one_slot_proxy, emulator):
    proxy = one_slot_proxy
    tasks, sockets = _warm_up(proxy, emulator)
    sock = connect(proxy.url)
    try:
        headers = {**proxy.auth, "Content-Type": "application/json", "Content-Length": "100000"}
        sock.sendall(request_head("POST", "/v1/images/generations", headers) + b'{"prompt": "ha')
        assert wait_for(lambda: len(proxy_tasks(proxy)) > len(tasks), 5)
    finally:
        sock.close()

    _settled(proxy, tasks, sockets, RELEASE_WITHIN)
    assert emulator.calls() == []
    assert _served(proxy).status_code == 200
