"""An in-process state store: for tests, `state_backend=memory`, and as the local fallback
when Redis is unreachable."""

from __future__ import annotations

import asyncio
import copy
import secrets
from collections import OrderedDict
from dataclasses import dataclass

from flux_proxy.clock import Clock, utc_day
from flux_proxy.store.base import (
    Block,
    JobRecord,
    KeyReservation,
    KeyUsage,
    LineClaim,
    Reservation,
    Usage,
    UsageRow,
    add_rows,
    doc_matches,
    empty_line_counts,
)

SWEEP_SECONDS = 30.0  # how often a write also drops the expired entries of its kind


class MemoryStore:
    name = "memory"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or Clock()
        self._lock = asyncio.Lock()
        self._blocks: dict[str, Block] = {}
        self._used: dict[tuple[str, str], float] = {}
        self._reservations: dict[str, tuple[Reservation, float]] = {}  # id -> (res, expires)
        self._blobs: dict[str, tuple[bytes, str, float]] = {}
        # batches and files (issue 10)
        self._docs: dict[tuple[str, str], dict] = {}
        self._lines: dict[str, list[_Line]] = {}
        self._line_counts: dict[str, dict] = {}
        self._jobs: dict[str, tuple[JobRecord, float]] = {}  # id -> (job, expires_at)
        # work: markers key -> (holder, expires), results key -> (data, expires), and the
        # cache key -> (data, expires) in least-recently-used-first order.
        self._claims: dict[str, tuple[str, float]] = {}
        self._results: dict[str, tuple[bytes, float]] = {}
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._cache_bytes = 0

        self._usage_rows: dict[tuple[str, str, str, str], UsageRow] = {}  # (day, key, acct, model)
        self._rows_pruned_to = ""  # the oldest day kept, as of the last prune
        self._swept: dict[str, float] = {}  # what -> when its expired entries were last dropped
        self._key_holds: dict[str, tuple[KeyReservation, float]] = {}  # id -> (hold, expires)
        # work: markers key -> (holder, expires), results key -> (data, expires), and the
        # cache key -> (data, expires) in least-recently-used-first order.
        self._claims: dict[str, tuple[str, float]] = {}
        self._results: dict[str, tuple[bytes, float]] = {}
        self._cache: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._cache_bytes = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get_blocks(self, accounts: list[str]) -> dict[str, Block]:
        return {a: self._blocks[a] for a in accounts if a in self._blocks}

    async def set_block(self, account: str, block: Block) -> None:
        self._blocks[account] = block

    async def clear_block(self, account: str) -> None:
        self._blocks.pop(account, None)

    def _reserved(self, account: str, day: str, now: float) -> float:
        total = 0.0
        for rid, (res, expires) in list(self._reservations.items()):
            if expires <= now:
                del self._reservations[rid]
            elif res.account == account and res.day == day:
                total += res.amount
        return total

    async def try_reserve(
        self, account: str, day: str, amount: float, budget: float | None, ttl: float
    ) -> Reservation | None:
        async with self._lock:
            now = self._clock.now()
            if budget is not None:
                held = self._used.get((account, day), 0.0) + self._reserved(account, day, now)
                if held + amount > budget:
                    return None
            reservation = Reservation(secrets.token_hex(16), account, day, amount)
            self._reservations[reservation.id] = (reservation, now + ttl)
            return reservation

    async def settle(self, reservation: Reservation, actual: float) -> None:
        async with self._lock:
            self._reservations.pop(reservation.id, None)
            key = (str(reservation.account), reservation.day)
            self._used[key] = self._used.get(key, 0.0) + actual

    async def release(self, reservation: Reservation) -> None:
        async with self._lock:
            self._reservations.pop(reservation.id, None)

    async def record_spend(self, account: str, day: str, amount: float) -> None:
        async with self._lock:
            self._used[(account, day)] = self._used.get((account, day), 0.0) + amount

    async def usage(self, accounts: list[str], day: str) -> dict[str, Usage]:
        now = self._clock.now()
        return {
            a: Usage(self._used.get((a, day), 0.0), self._reserved(a, day, now)) for a in accounts
        }

    def _sweep_due(self, what: str, now: float) -> bool:
        """Whether to drop `what`'s expired entries now: every SWEEP_SECONDS, not on every
        write (a scan of every entry per write grew with the store). Reads check expiry
        themselves, so an expired entry is never served in between."""
        if now < self._swept.get(what, float("-inf")) + SWEEP_SECONDS:
            return False
        self._swept[what] = now
        return True

    async def put_blob(self, key: str, data: bytes, content_type: str, ttl: float) -> None:
        now = self._clock.now()
        if self._sweep_due("blobs", now):
            for k, (_, _, expires) in list(self._blobs.items()):
                if expires <= now:
                    del self._blobs[k]
        self._blobs[key] = (data, content_type, now + ttl)

    async def get_blob(self, key: str) -> tuple[bytes, str] | None:
        item = self._blobs.get(key)
        if item is None or item[2] <= self._clock.now():
            return None
        return item[0], item[1]

    # --- key quotas and usage ---------------------------------------------------------------
    def _key_totals(self, key: str, day: str, now: float) -> KeyUsage:
        images, neurons, held_images, held_neurons = 0, 0.0, 0, 0.0
        for (row_day, row_key, _, _), row in self._usage_rows.items():
            if row_day == day and row_key == key:
                images += row.images
                neurons += row.neurons
        for rid, (hold, expires) in list(self._key_holds.items()):
            if expires <= now:
                del self._key_holds[rid]
            elif hold.key == key and hold.day == day:
                held_images += hold.images
                held_neurons += hold.neurons
        return KeyUsage(images, neurons, held_images, held_neurons)

    def _add_rows(self, rows: list[UsageRow], keep_days: int) -> None:
        oldest = utc_day(self._clock.now() - keep_days * 86400)
        if oldest != self._rows_pruned_to:  # once a day, not a scan of every row per request
            self._rows_pruned_to = oldest
            for key in [k for k in self._usage_rows if k[0] < oldest]:
                del self._usage_rows[key]
        for row in rows:
            index = (row.day, row.key, row.account, row.model)
            self._usage_rows[index] = add_rows(self._usage_rows.get(index), row)

    async def try_reserve_key(
        self,
        key: str,
        day: str,
        images: int,
        neurons: float,
        max_images: int | None,
        max_neurons: float | None,
        ttl: float,
    ) -> KeyReservation | None:
        async with self._lock:
            now = self._clock.now()
            seen = self._key_totals(key, day, now)
            if max_images is not None and seen.images + seen.reserved_images + images > max_images:
                return None
            if max_neurons is not None and (
                seen.neurons + seen.reserved_neurons + neurons > max_neurons
            ):
                return None
            hold = KeyReservation(secrets.token_hex(16), key, day, images, float(neurons))
            self._key_holds[hold.id] = (hold, now + ttl)
            return hold

    async def settle_key(
        self, reservation: KeyReservation, rows: list[UsageRow], keep_days: int
    ) -> None:
        async with self._lock:
            self._key_holds.pop(reservation.id, None)
            self._add_rows(rows, keep_days)

    async def release_key(self, reservation: KeyReservation) -> None:
        async with self._lock:
            self._key_holds.pop(reservation.id, None)

    async def record_usage(self, rows: list[UsageRow], keep_days: int) -> None:
        async with self._lock:
            self._add_rows(rows, keep_days)

    async def key_usage(self, key: str, day: str) -> KeyUsage:
        return self._key_totals(key, day, self._clock.now())

    async def usage_rows(
        self, first_day: str, last_day: str, key: str | None = None
    ) -> list[UsageRow]:
        return [
            row
            for (day, row_key, _, _), row in self._usage_rows.items()
            if first_day <= day <= last_day and (key is None or row_key == key)
        ]

    # --- work ---
    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        now = self._clock.now()
        current = self._claims.get(key)
        if current is not None and current[1] > now:
            return current[0]
        self._claims[key] = (holder, now + ttl)
        return None

    async def holder_of(self, key: str) -> str | None:
        current = self._claims.get(key)
        if current is None or current[1] <= self._clock.now():
            return None
        return current[0]

    async def unclaim(self, key: str, holder: str) -> None:
        current = self._claims.get(key)
        if current is not None and current[0] == holder:
            del self._claims[key]

    async def put_result(self, key: str, data: bytes, ttl: float) -> None:
        now = self._clock.now()
        if self._sweep_due("results", now):
            for k, (_, expires) in list(self._results.items()):
                if expires <= now:
                    del self._results[k]
        self._results[key] = (data, now + ttl)

    async def get_result(self, key: str) -> bytes | None:
        item = self._results.get(key)
        if item is None or item[1] <= self._clock.now():
            return None
        return item[0]

    async def cache_put(self, key: str, data: bytes, ttl: float, max_bytes: int) -> None:
        self._cache_remove(key)
        if len(data) > max_bytes:
            return
        self._cache[key] = (data, self._clock.now() + ttl)
        self._cache_bytes += len(data)
        if self._sweep_due("cache", self._clock.now()):
            self._cache_expire()
        while self._cache_bytes > max_bytes and self._cache:
            self._cache_remove(next(iter(self._cache)))

    async def cache_get(self, key: str) -> bytes | None:
        item = self._cache.get(key)
        if item is None:
            return None
        if item[1] <= self._clock.now():
            self._cache_remove(key)
            return None
        self._cache.move_to_end(key)
        return item[0]

    async def cache_drop(self, key: str) -> None:
        self._cache_remove(key)

    async def cache_stats(self) -> dict:
        self._cache_expire()
        return {"entries": len(self._cache), "bytes": self._cache_bytes}

    def _cache_remove(self, key: str) -> None:
        item = self._cache.pop(key, None)
        if item is not None:
            self._cache_bytes -= len(item[0])

    def _cache_expire(self) -> None:
        now = self._clock.now()
        for key in [k for k, (_, expires) in self._cache.items() if expires <= now]:
            self._cache_remove(key)

    # --- jobs ---
    async def put_job(self, job: JobRecord, ttl: float) -> None:
        now = self._clock.now()
        if self._sweep_due("jobs", now):
            for job_id, (_, expires) in list(self._jobs.items()):
                if expires <= now:
                    del self._jobs[job_id]
        self._jobs[job.id] = (job, now + ttl)

    async def get_job(self, job_id: str) -> JobRecord | None:
        item = self._jobs.get(job_id)
        if item is None or item[1] <= self._clock.now():
            return None
        return item[0]

    async def swap_job(self, job: JobRecord, expect: frozenset[str], ttl: float) -> bool:
        async with self._lock:
            current = await self.get_job(job.id)
            if current is None or current.status not in expect:
                return False
            self._jobs[job.id] = (job, self._clock.now() + ttl)
            return True

    async def status(self) -> dict:
        return {"backend": self.name, "ok": True, "detail": "in-process; forgotten on restart"}

    # --- batches and files (issue 10) ---------------------------------------------------------
    async def put_doc(self, kind: str, doc_id: str, doc: dict) -> None:
        self._docs[(kind, doc_id)] = copy.deepcopy(doc)

    async def get_doc(self, kind: str, doc_id: str) -> dict | None:
        doc = self._docs.get((kind, doc_id))
        return copy.deepcopy(doc) if doc is not None else None

    async def list_docs(self, kind: str) -> list[dict]:
        return [copy.deepcopy(d) for (k, _), d in self._docs.items() if k == kind]

    async def patch_doc(
        self, kind: str, doc_id: str, changes: dict, when: dict | None = None
    ) -> dict | None:
        doc = self._docs.get((kind, doc_id))
        if doc is None or not doc_matches(doc, when):
            return None
        doc.update(copy.deepcopy(changes))
        return copy.deepcopy(doc)

    async def delete_doc(self, kind: str, doc_id: str) -> bool:
        return self._docs.pop((kind, doc_id), None) is not None

    async def add_lines(self, batch: str, payloads: list[str], ttl: float) -> None:
        self._lines[batch] = [_Line(payload) for payload in payloads]
        self._line_counts[batch] = empty_line_counts()

    async def claim_line(self, batch: str, worker: str, lease: float) -> LineClaim | None:
        now = self._clock.now()
        open_lines = [
            (index, line)
            for index, line in enumerate(self._lines.get(batch, ()))
            if line.outcome is None and (line.holder is None or line.lease_until <= now)
        ]
        if not open_lines:
            return None
        # As SQLite: a dead holder's line first, then the line tried fewest times.
        index, line = min(open_lines, key=lambda x: (x[1].holder is None, x[1].claims, x[0]))
        line.holder, line.lease_until = worker, now + lease
        line.claims += 1
        return LineClaim(batch, index, line.payload, f"{worker}/{line.claims}")

    async def release_line(self, claim: LineClaim) -> None:
        line = self._line(claim)
        if line is not None and line.outcome is None and line.token == claim.token:
            line.holder = None

    async def finish_line(
        self, claim: LineClaim, outcome: str, result: str, neurons: float = 0.0
    ) -> dict | None:
        line = self._line(claim)
        if line is None or line.outcome is not None:
            return None
        line.outcome, line.result, line.holder = outcome, result, None
        counts = self._line_counts[claim.batch]
        counts[outcome] += 1
        counts["neurons"] += neurons
        return dict(counts)

    async def line_counts(self, batch: str) -> dict:
        return dict(self._line_counts.get(batch) or empty_line_counts())

    async def line_results(self, batch: str) -> list[tuple[int, str, str]]:
        return [
            (index, line.outcome, line.result)
            for index, line in enumerate(self._lines.get(batch, ()))
            if line.outcome is not None and line.result is not None
        ]

    async def drop_lines(self, batch: str) -> None:
        self._lines.pop(batch, None)
        self._line_counts.pop(batch, None)

    def _line(self, claim: LineClaim) -> _Line | None:
        lines = self._lines.get(claim.batch, [])
        return lines[claim.index] if 0 <= claim.index < len(lines) else None


@dataclass
class _Line:
    payload: str
    outcome: str | None = None
    result: str | None = None
    holder: str | None = None
    lease_until: float = 0.0
    claims: int = 0

    @property
    def token(self) -> str:
        return f"{self.holder}/{self.claims}"
