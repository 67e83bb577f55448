"""Everything one emulator instance remembers: accounts, usage, faults, the call log."""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from flux_proxy.clock import Clock
from flux_proxy.emulator.faults import FaultBook
from flux_proxy.emulator.limits import NeuronLedger, RateLimiter
from flux_proxy.emulator.render import AnswerCache
from flux_proxy.models import MODELS, ModelSpec

CALL_LOG_LIMIT = 10_000  # enough for any test; bounded so a long benchmark does not grow forever


class Emulator:
    def __init__(
        self,
        accounts: dict[str, str],
        *,
        clock: Clock,
        daily_neurons: float | None,
        latency: float,
        rate_limit_per_minute: int,
        max_body_bytes: int,
        fault_seed: int,
    ) -> None:
        self.accounts = dict(accounts)  # account id -> token
        self.clock = clock
        # Cloudflare takes full ids only: no short names or aliases, unlike the proxy.
        self.models: dict[str, ModelSpec] = {spec.id: spec for spec in MODELS}
        self.ledger = NeuronLedger(clock, daily_neurons)
        self.limiter = RateLimiter(clock, rate_limit_per_minute)
        self.faults = FaultBook(seed=fault_seed)
        self.cache = AnswerCache()
        self.calls: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_LIMIT)
        self.token_checks = 0
        self.latency = latency
        self.max_body_bytes = max_body_bytes
        self._initial = {"latency": latency, "daily_neurons": daily_neurons}
        self._unfinished: set[asyncio.Task] = set()  # calls still running, caller or not
        self.on_reset: list[Callable[[], None]] = []  # what other parts remember (catalogue)

    def track(self, call: asyncio.Task) -> None:
        """Keep a running call (it finishes and bills even after its client left) until it
        ends; `reset` stops those left over, so they never bill into the next test."""
        self._unfinished.add(call)
        call.add_done_callback(self._unfinished.discard)
        call.add_done_callback(lambda t: t.cancelled() or t.exception())

    def token_matches(self, account: str, token: str | None) -> bool:
        expected = self.accounts.get(account)
        if expected is None or token is None:
            return False
        return hmac.compare_digest(expected.encode(), token.encode())

    def known_token(self, token: str | None) -> bool:
        if token is None:
            return False
        # Compare against every token so the time taken does not reveal which one matched.
        found = False
        for expected in self.accounts.values():
            found |= hmac.compare_digest(expected.encode(), token.encode())
        return found

    def reset(self) -> None:
        for call in list(self._unfinished):
            call.cancel()
        self.faults.clear()
        self.calls.clear()
        self.ledger.clear()
        self.limiter.clear()
        self.token_checks = 0
        self.latency = self._initial["latency"]
        self.ledger.daily_neurons = self._initial["daily_neurons"]
        for clear in self.on_reset:
            clear()


EMULATOR = web.AppKey("flux_proxy_emulator", Emulator)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
