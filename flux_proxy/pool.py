"""The account pool: choose an account, make one attempt, learn from it, fail over.

What the pool learns goes to the `StateStore` (blocks, the neuron ledger), so every replica and
every restart skips an account that is out of neurons until 00:00 UTC instead of paying a round
trip to rediscover it. The pool knows neither the OpenAI nor the Cloudflare wire format: it
sees `ImageJob`s, `Attempt`s and `GeneratedImage`s.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from flux_proxy.clock import Clock, iso, next_utc_midnight, utc_day
from flux_proxy.errors import ApiError
from flux_proxy.job import GeneratedImage, ImageJob
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.pool_errors import (
    RequestTally,
    beyond_every_budget,
    busy_error,
    nothing_usable,
    rejected_input,
)
from flux_proxy.routing import order_accounts
from flux_proxy.settings import AccountConfig, Settings
from flux_proxy.slots import SlotBoard
from flux_proxy.store.base import Block, Reservation, StateStore
from flux_proxy.upstream.classify import Attempt, OutcomeKind, classify_exception

MODEL_UNAVAILABLE_SECONDS = 3600.0
TRANSIENT_STREAK_LIMIT = 3
TRANSIENT_COOLDOWN = 30.0


class UpstreamClient(Protocol):
    async def run(self, account: AccountConfig, job: ImageJob) -> Attempt: ...


@dataclass
class CallProgress:
    """How far one image's work has got, shared with the work layer (`flux_proxy/work/`).

    A call that was sent is Workers AI working (and billing): when its caller leaves, the work
    layer lets it run to its end instead of cancelling it, and sets `abandoned` so that no
    further call (failover to the next account) is started for nobody.

    `before_send`, when given, is awaited just before each call is sent (a reservation and a
    slot are held by then, and given back if it raises): an async job moves itself to
    `in_progress` there, so that a cancel can win until that moment and never after."""

    calling: int = 0  # upstream calls in flight now
    sent: int = 0  # upstream calls started so far
    abandoned: bool = False
    before_send: Callable[[], Awaitable[None]] | None = None


def caller_gone() -> ApiError:
    return ApiError(499, "the caller left before an image was made", code="client_gone")


def account_key(account: AccountConfig) -> str:
    """`N:<8 hex of sha256(account id)>`: renumbering never inherits another's history."""
    return f"{account.number}:{_fingerprint(account.account_id)}"


def token_key(account: AccountConfig) -> str:
    """Where a disabled block lives: tied to the token, so a fixed token clears it."""
    return f"{account_key(account)}:token:{_fingerprint(account.token.get_secret_value())}"


def _outlasts(current: Block, new: Block) -> bool:
    return current.until is None or (new.until is not None and current.until >= new.until)


@functools.lru_cache(maxsize=1024)
def _fingerprint(value: str) -> str:
    # Cached: every request asks for the keys of every account, and they never change.
    return hashlib.sha256(value.encode()).hexdigest()[:8]


class AccountPool:
    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        store: StateStore,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.accounts = sorted(settings.accounts, key=lambda account: account.number)
        self.slots = SlotBoard(settings.account_concurrency)
        self._cursor = 0
        # (account number, model id) -> (until, why), shown per account in /health
        self._model_unavailable: dict[tuple[int, str], tuple[float, str]] = {}
        self._transient_streak: dict[int, int] = {}
        self._last_error_code: dict[int, int | None] = {}
        # The store keys of each account, worked out once: they are asked for on every request.
        self._keys = {a.number: (a, account_key(a), token_key(a)) for a in self.accounts}

    # --- the request path ----------------------------------------------------------------

    async def generate(
        self,
        job: ImageJob,
        *,
        request_id: str,
        progress: CallProgress | None = None,
        accounts: Collection[int] | None = None,
        keep_back: float = 0.0,
    ) -> GeneratedImage:
        """An image from the first account that can make it; ApiError when none can.

        Batch lines pass `accounts` (only these account numbers may be used) and `keep_back`
        (neurons of each daily budget they must leave for live requests).
        """
        run = RequestTally(deadline=self.clock.now() + self.settings.request_deadline)
        order = await self._order()
        if accounts is not None:
            order = [account for account in order if account.number in accounts]
        if never := beyond_every_budget(job, order, self.settings.budget_for, keep_back):
            raise never
        slot_wait_until: float | None = None
        while True:
            busy: list[AccountConfig] = []
            blocks = await self._blocks(order)
            for account in order:
                if account.number in run.tried:
                    continue
                if self.clock.now() >= run.deadline:
                    run.deadline_hit = True
                    break
                if self._skip_reason(account, job, blocks, run):
                    continue
                if progress is not None and progress.abandoned:
                    raise caller_gone()
                if not self.slots.try_take(account.number):
                    busy.append(account)
                    continue
                image = await self._try(account, job, run, request_id, progress, keep_back)
                if image is not None:
                    return image
                if run.deadline_hit:
                    break
            if not busy or run.deadline_hit:
                raise nothing_usable(run, job, self.settings.request_deadline, self.clock.now())
            # Every account left is busy: wait (bounded) for any of them to free a slot.
            if slot_wait_until is None:
                slot_wait_until = time.monotonic() + self.settings.slot_wait_seconds
            wait = min(slot_wait_until - time.monotonic(), run.deadline - self.clock.now())
            if wait <= 0 or not await self.slots.wait_for_any(
                [account.number for account in busy], wait
            ):
                raise busy_error(job, self.settings.account_concurrency)
            order = busy

    async def _order(self) -> list[AccountConfig]:
        strategy = self.settings.routing_strategy
        remaining: dict[int, float | None] = {}
        if strategy == "most_remaining":
            remaining = await self._remaining_today()
        cursor = self._cursor
        self._cursor += 1
        return order_accounts(strategy, self.accounts, cursor=cursor, remaining=remaining)

    async def _blocks(self, accounts: list[AccountConfig]) -> dict[int, Block]:
        """The active block per account number (a disabled token wins over the rest)."""
        now = self.clock.now()
        pairs = [self._keys_of(a) for a in accounts]
        found = await self.store.get_blocks([p[0] for p in pairs] + [p[1] for p in pairs])
        active: dict[int, Block] = {}
        for account, (plain, token) in zip(accounts, pairs, strict=True):
            for key in (token, plain):
                block = found.get(key)
                if block is not None and block.active(now):
                    active[account.number] = block
                    break
            if self.metrics:
                # Blocks end by themselves and other replicas set them: what was just read is
                # the freshest view, so the state gauge follows it on every request.
                state = active[account.number].kind if account.number in active else "available"
                self.metrics.set_account_state(account.number, state)
        return active

    def _keys_of(self, account: AccountConfig) -> tuple[str, str]:
        """(account_key, token_key), cached for the pool's own accounts."""
        cached = self._keys.get(account.number)
        if cached is None or cached[0] is not account:
            return account_key(account), token_key(account)
        return cached[1], cached[2]

    def _skip_reason(
        self, account: AccountConfig, job: ImageJob, blocks: dict[int, Block], run: RequestTally
    ) -> str | None:
        """Why this account must not be called for this job now (None: it may be)."""
        number = account.number
        block = blocks.get(number)
        reason = None
        if block is not None:
            reason = block.kind
            if block.kind == "disabled":
                run.disabled += 1
            else:
                run.exhausted += 1
                run.returns.append(block.until or self.clock.now())
        elif (unavailable := self._model_unavailable.get((number, job.model.id))) and (
            unavailable[0] > self.clock.now()
        ):
            reason = "model_unavailable"
            run.model_unavailable += 1
            run.unavailable_reasons.append(unavailable[1])
        if reason is not None:
            run.tried.add(number)
            self._count_skip(number, reason)
        return reason

    async def _try(
        self,
        account: AccountConfig,
        job: ImageJob,
        run: RequestTally,
        request_id: str,
        progress: CallProgress | None = None,
        keep_back: float = 0.0,
    ) -> GeneratedImage | None:
        """One attempt on an account whose slot the caller took. Gives the slot back."""
        number, key = account.number, self._keys_of(account)[0]
        reservation: Reservation | None = None
        sent = False
        try:
            now = self.clock.now()
            estimate = job.estimated_neurons()
            budget = self.settings.budget_for(account)
            reservation = await self.store.try_reserve(
                key,
                utc_day(now),
                # A price-less model still needs a budget left to be worth a call.
                max(estimate, 1.0),
                None if budget is None else max(0.0, budget - keep_back),
                ttl=self.settings.upstream_read_timeout + 60,
            )
            run.tried.add(number)
            if reservation is None:
                run.exhausted += 1
                run.returns.append(next_utc_midnight(now))
                self._count_skip(number, "budget")
                return None
            if progress is None:
                sent = True
                attempt = await self._call(account, job, run)
            else:
                if progress.before_send is not None:
                    await progress.before_send()
                progress.calling += 1
                progress.sent += 1
                sent = True
                try:
                    attempt = await self._call(account, job, run)
                finally:
                    progress.calling -= 1
            if attempt.kind is OutcomeKind.SUCCESS or attempt.maybe_billed:
                spent = attempt.neurons if attempt.neurons is not None else estimate
                await self.store.settle(reservation, spent)
                if self.metrics:
                    model = job.model.short_name
                    self.metrics.child(self.metrics.neurons, str(number), model).inc(spent)
                    if attempt.kind is not OutcomeKind.SUCCESS:
                        self.metrics.duplicate_spend.labels(str(number), model).inc()
            else:
                await self.store.release(reservation)
            reservation = None
            self._log(request_id, account, job, attempt)
            await self._learn(account, job, attempt, run)
            if attempt.kind is OutcomeKind.SUCCESS and attempt.image is not None:
                attempt.image.account = number
                return attempt.image
            if attempt.kind in (
                OutcomeKind.INPUT_ERROR,
                OutcomeKind.TOO_LARGE,
                OutcomeKind.CONFIG_ERROR,
            ):
                raise rejected_input(attempt)
            return None
        finally:
            self.slots.give_back(number)
            if reservation is not None and sent:
                # A sent call given up (shutdown) is billed by Workers AI all the same: count
                # its estimate, or the account's day would show neurons it no longer has.
                await asyncio.shield(self.store.settle(reservation, estimate))
            elif reservation is not None:
                # Shielded: a cancelled request (client gone) must still free its neurons.
                await asyncio.shield(self.store.release(reservation))

    async def _call(self, account: AccountConfig, job: ImageJob, run: RequestTally) -> Attempt:
        started = time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, run.deadline - self.clock.now())):
                return await self.client.run(account, job)
        except TimeoutError:
            # Our own deadline, not the client's (which never raises): the call was sent.
            run.deadline_hit = True
            attempt = classify_exception(TimeoutError(), latency=time.monotonic() - started)
            attempt.message = "The request deadline passed while Workers AI was working"
            return attempt

    # --- learning ------------------------------------------------------------------------

    async def _learn(
        self, account: AccountConfig, job: ImageJob, attempt: Attempt, run: RequestTally
    ) -> None:
        number, now = account.number, self.clock.now()
        kind = attempt.kind
        if kind is OutcomeKind.TRANSIENT:
            run.transient += 1
            streak = self._transient_streak.get(number, 0) + 1
            self._transient_streak[number] = 0 if streak >= TRANSIENT_STREAK_LIMIT else streak
            if streak >= TRANSIENT_STREAK_LIMIT:
                reason = f"{streak} failed calls in a row"
                await self._block(account, Block("cooling", now + TRANSIENT_COOLDOWN, reason))
        else:
            self._transient_streak.pop(number, None)
        if kind is not OutcomeKind.SUCCESS:
            self._last_error_code[number] = attempt.code

        block: Block | None = None
        if kind is OutcomeKind.QUOTA_EXHAUSTED:
            block = Block("parked", next_utc_midnight(now), attempt.message, attempt.code, now)
            await self._record_all_spent(account, now)
        elif kind in (OutcomeKind.RATE_LIMITED, OutcomeKind.CAPACITY):
            default = (
                self.settings.rate_limit_cooldown
                if kind is OutcomeKind.RATE_LIMITED
                else self.settings.capacity_cooldown
            )
            wait = attempt.retry_after if attempt.retry_after is not None else default
            block = Block("cooling", now + wait, attempt.message, attempt.code, now)
        elif kind is OutcomeKind.AUTH:
            block = Block("disabled", None, attempt.message, attempt.code, now)
            run.disabled += 1
        elif kind is OutcomeKind.MODEL_UNAVAILABLE:
            until = now + MODEL_UNAVAILABLE_SECONDS
            self._model_unavailable[(number, job.model.id)] = (until, attempt.message)
            run.model_unavailable += 1
            run.unavailable_reasons.append(attempt.message)
        if block is not None:
            await self._block(account, block)
            if block.until is not None:
                run.exhausted += 1
                run.returns.append(block.until)

    async def _block(self, account: AccountConfig, block: Block) -> None:
        """Store a block, unless a longer one is already active (a late 429 must not shorten
        a park until midnight that another request just learned)."""
        key = token_key(account) if block.kind == "disabled" else account_key(account)
        current = (await self.store.get_blocks([key])).get(key)
        now = self.clock.now()
        if current is not None and current.active(now) and _outlasts(current, block):
            return
        await self.store.set_block(key, block)
        if self.metrics:
            self.metrics.set_account_state(account.number, block.kind)

    async def _record_all_spent(self, account: AccountConfig, now: float) -> None:
        """Cloudflare says the day's allocation is gone: make the ledger agree (remaining 0)."""
        budget = self.settings.budget_for(account)
        if budget is None:
            return
        key, day = account_key(account), utc_day(now)
        used = (await self.store.usage([key], day))[key].used
        if budget - used > 0:
            await self.store.record_spend(key, day, budget - used)

    # --- observation ---------------------------------------------------------------------

    def _count_skip(self, number: int, reason: str) -> None:
        if self.metrics:
            self.metrics.accounts_skipped.labels(str(number), reason).inc()

    def _log(self, request_id: str, account: AccountConfig, job: ImageJob, attempt: Attempt):
        number, model = str(account.number), job.model.short_name
        log_event(
            "upstream_attempt",
            request_id=request_id,
            account=account.number,
            model=model,
            width=job.width,
            height=job.height,
            steps=job.model.effective_steps(job.steps),
            outcome=attempt.kind.value,
            status=attempt.status,
            cf_code=attempt.code,
            latency_ms=round(attempt.latency * 1000),
            neurons=attempt.neurons,
            maybe_billed=attempt.maybe_billed or None,
            message=None if attempt.kind is OutcomeKind.SUCCESS else attempt.message,
        )
        if self.metrics:
            code = "" if attempt.code is None else str(attempt.code)
            metrics = self.metrics
            metrics.child(metrics.upstream_calls, number, model, attempt.kind.value, code).inc()
            metrics.child(metrics.upstream_latency, number, model).observe(attempt.latency)
            if attempt.kind is OutcomeKind.SUCCESS:
                self.metrics.set_account_state(account.number, "available")

    async def _remaining_today(self) -> dict[int, float | None]:
        keys = {account.number: account_key(account) for account in self.accounts}
        usage = await self.store.usage(list(keys.values()), utc_day(self.clock.now()))
        return {
            account.number: usage[keys[account.number]].remaining(self.settings.budget_for(account))
            for account in self.accounts
        }

    async def snapshot(self) -> list[dict]:
        """Per account, for /health, the web page and `check`. Masked ids only."""
        now = self.clock.now()
        blocks = await self._blocks(self.accounts)
        keys = [account_key(account) for account in self.accounts]
        usage = await self.store.usage(keys, utc_day(now))
        entries = []
        for account, key in zip(self.accounts, keys, strict=True):
            block = blocks.get(account.number)
            budget = self.settings.budget_for(account)
            state = block.kind if block is not None else "available"
            entries.append(
                {
                    "number": account.number,
                    "account": account.masked_id,
                    "state": state,
                    "until": iso(block.until) if block is not None else None,
                    "reason": block.reason if block is not None else None,
                    "code": block.code if block is not None else None,
                    "neurons_used_today": round(usage[key].used, 2),
                    "neurons_remaining_today": (
                        None if budget is None else round(usage[key].remaining(budget), 2)
                    ),
                    "daily_budget": budget,
                    "in_flight": self.slots.in_use(account.number),
                    "last_error_code": self._last_error_code.get(account.number),
                    "next_reset": iso(next_utc_midnight(now)),
                    "models_unavailable": self._models_unavailable(account.number, now),
                }
            )
        return entries

    def _models_unavailable(self, number: int, now: float) -> list[dict]:
        """Models this account answered it cannot serve (paid plan, private, terms not
        accepted), with Cloudflare's reason, until the pool tries it again."""
        return [
            {"model": model, "until": iso(until), "reason": reason}
            for (account, model), (until, reason) in sorted(self._model_unavailable.items())
            if account == number and until > now
        ]

    @staticmethod
    def is_usable_now(entry: dict) -> bool:
        """Whether a `snapshot()` entry could take a call right now."""
        remaining = entry.get("neurons_remaining_today")
        return entry.get("state") == "available" and (remaining is None or remaining > 0)
