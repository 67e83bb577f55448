"""The state-store interface: one narrow seam between the pool and its memory.

Back-ends: `MemoryStore` (tests, `state_backend=memory`), `SqliteStore` (the default: survives
restarts, even `kill -9`), `RedisStore` (several replicas share one view). The pool and the image
store speak only this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

BlockKind = Literal["parked", "cooling", "disabled"]


@dataclass(frozen=True)
class Block:
    """Why an account must not be called, and until when.

    parked: daily neuron allocation spent, until the next 00:00 UTC.
    cooling: rate limited or over capacity, for a short while.
    disabled: bad token or blocked account; `until` None means until the operator fixes it
    (a restart with a new token clears it, because the block is keyed by the account's token
    fingerprint, see `AccountPool`).
    """

    kind: BlockKind
    until: float | None  # Unix seconds; None = no end
    reason: str  # human text, never upstream raw bodies or tokens
    code: int | None = None  # the Cloudflare error code that caused it, if any
    since: float | None = None

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


@dataclass(frozen=True)
class Usage:
    """Neurons an account has used (settled) and holds reserved in one UTC day."""

    used: float = 0.0
    reserved: float = 0.0

    def remaining(self, budget: float | None) -> float | None:
        if budget is None:
            return None
        return max(0.0, budget - self.used - self.reserved)


@dataclass(frozen=True)
class Reservation:
    """Neurons held for one upstream call until it is settled or released."""

    id: str
    account: str
    day: str  # the UTC day the call is billed to
    amount: float


# --- jobs ----------------------------------------------------------------------------------
JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
FINAL_JOB_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class JobRecord:
    """One durable unit of work somebody asked for and may come back for (an async image job,
    a batch line). Stores keep it whole and never look inside `request`, `meta` or `result`.

    `status` moves queued -> in_progress -> completed | failed, or queued -> cancelled; an
    in_progress job whose worker died goes in_progress -> in_progress again (`attempts` + 1).
    Every change is a compare-and-set (`StateStore.swap_job`), so two replicas never both move
    the same job.
    """

    id: str
    owner: str  # `Caller.name` of whoever made it; reads check `Caller.owns(owner)`
    kind: str  # which entry point made it, e.g. "image.generation", "image.edit"
    status: JobStatus
    created_at: float  # Unix seconds, from the injected clock
    request: bytes = b""  # the entry point's input, opaque to the store
    meta: dict = field(default_factory=dict)  # small JSON-able facts (model, base URL, ...)
    started_at: float | None = None  # last time a worker took it up
    completed_at: float | None = None  # when it reached a final status
    result: bytes | None = None  # opaque (for images: the rendered ImagesResponse JSON)
    error: dict | None = None  # the OpenAI error object once failed
    attempts: int = 0  # times a worker started it; > 1 means a worker died mid-job

    @property
    def final(self) -> bool:
        return self.status in FINAL_JOB_STATUSES


# --- key quotas and usage ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyReservation:
    """Images and neurons held against a named key's daily quota for one request."""

    id: str
    key: str  # the key's name (`Caller.name`), never the key
    day: str  # the UTC day the request counts in
    images: int
    neurons: float


@dataclass(frozen=True)
class KeyUsage:
    """What a named key has used (settled) and holds reserved in one UTC day.

    `images` are images made upstream; images served from the seeded cache are counted as
    `cache_hits` in the usage rows and do not count against a quota."""

    images: int = 0
    neurons: float = 0.0
    reserved_images: int = 0
    reserved_neurons: float = 0.0


@dataclass(frozen=True)
class UsageRow:
    """One usage row: what one key got from one account with one model on one UTC day.

    As an argument it is an increment; as a result, the day's totals. `account` is the
    account's number as text, or "" when no account served (a cache hit, a failed request).
    """

    day: str
    key: str
    account: str
    model: str
    images: int = 0
    neurons: float = 0.0
    requests: int = 0
    cache_hits: int = 0
    neurons_saved: float = 0.0


USAGE_COUNTERS = ("images", "neurons", "requests", "cache_hits", "neurons_saved")


def add_rows(total: UsageRow | None, increment: UsageRow) -> UsageRow:
    if total is None:
        return increment
    # Spelled out (not a loop over USAGE_COUNTERS): it runs once per request per row.
    return UsageRow(
        total.day,
        total.key,
        total.account,
        total.model,
        images=total.images + increment.images,
        neurons=total.neurons + increment.neurons,
        requests=total.requests + increment.requests,
        cache_hits=total.cache_hits + increment.cache_hits,
        neurons_saved=total.neurons_saved + increment.neurons_saved,
    )


class StateStore(Protocol):
    """Everything the proxy must remember, shared between replicas when the back-end allows.

    `account` is the account's key: its number N as a string plus a short fingerprint of its
    id, so renumbering accounts never mixes their histories up (see `pool.account_key`).
    All methods are atomic with respect to other callers, across processes where the
    back-end is shared.
    """

    name: str  # "memory" | "sqlite" | "redis"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # --- blocks ----------------------------------------------------------------------------
    async def get_blocks(self, accounts: list[str]) -> dict[str, Block]:
        """Active-or-not blocks for these accounts (callers check `Block.active`)."""
        ...

    async def set_block(self, account: str, block: Block) -> None: ...

    async def clear_block(self, account: str) -> None: ...

    # --- neuron ledger ----------------------------------------------------------------------
    async def try_reserve(
        self, account: str, day: str, amount: float, budget: float | None, ttl: float
    ) -> Reservation | None:
        """Hold `amount` neurons if used + reserved + amount <= budget (None: no limit).

        Returns None, changing nothing, when the budget cannot cover it. A reservation that
        is neither settled nor released within `ttl` seconds lapses (a crashed replica must
        not hold neurons forever).
        """
        ...

    async def settle(self, reservation: Reservation, actual: float) -> None:
        """Turn a reservation into spend of `actual` neurons (the real figure)."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Drop a reservation: the call failed or never happened, nothing was spent."""
        ...

    async def record_spend(self, account: str, day: str, amount: float) -> None:
        """Add spend without a reservation (e.g. an upstream said the allocation is gone)."""
        ...

    async def usage(self, accounts: list[str], day: str) -> dict[str, Usage]: ...

    # --- blobs (URL responses) ---------------------------------------------------------------
    async def put_blob(self, key: str, data: bytes, content_type: str, ttl: float) -> None: ...

    async def get_blob(self, key: str) -> tuple[bytes, str] | None:
        """The blob and its content type, or None when missing or expired."""
        ...

    # --- key quotas and usage -----------------------------------------------------------------
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
        """Hold `images` and `neurons` against `key`'s quota for `day` if, counting what is
        used and held, neither limit would be passed (None: no limit). Returns None,
        changing nothing, when it would. A hold lapses after `ttl` seconds like `try_reserve`."""
        ...

    async def settle_key(
        self, reservation: KeyReservation, rows: list[UsageRow], keep_days: int
    ) -> None:
        """Drop the hold and add `rows` (the request's real figures, for the reservation's key
        and day) to the usage rows, in one step."""
        ...

    async def release_key(self, reservation: KeyReservation) -> None:
        """Drop the hold: the request made nothing."""
        ...

    async def record_usage(self, rows: list[UsageRow], keep_days: int) -> None:
        """Add rows without a reservation (cache hits, failed requests). Rows older than
        `keep_days` days before today may be forgotten from here on."""
        ...

    async def key_usage(self, key: str, day: str) -> KeyUsage: ...

    async def usage_rows(
        self, first_day: str, last_day: str, key: str | None = None
    ) -> list[UsageRow]:
        """Every row with `first_day <= day <= last_day` (for one key, or all), in no order."""
        ...

    # --- work: in-flight markers, kept results, the seeded cache ------------------------------
    # Markers say "this work is being done, by `holder`" (Redis: SET NX PX), so a repeat on any
    # replica waits for it instead of paying again. Results are a finished request's answer,
    # kept for retries to collect. The cache holds seeded images by content key, least
    # recently used first out beyond `max_bytes`.
    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        """Mark `key` as held by `holder` for `ttl` seconds unless someone holds it already.

        Returns None when the claim was made, else the current holder (changing nothing)."""
        ...

    async def holder_of(self, key: str) -> str | None:
        """Who holds `key` now, or None (never claimed, released or lapsed)."""
        ...

    async def unclaim(self, key: str, holder: str) -> None:
        """Release `key` if `holder` still holds it (a lapsed and re-taken claim is kept)."""
        ...

    async def put_result(self, key: str, data: bytes, ttl: float) -> None: ...

    async def get_result(self, key: str) -> bytes | None:
        """The kept result, or None when missing or expired."""
        ...

    async def cache_put(self, key: str, data: bytes, ttl: float, max_bytes: int) -> None:
        """Store (or replace) an entry, then evict least recently used entries until the
        cache holds at most `max_bytes` (an entry larger than that is not kept)."""
        ...

    async def cache_get(self, key: str) -> bytes | None:
        """The entry, or None when missing or expired; a hit makes it the most recently used."""
        ...

    async def cache_drop(self, key: str) -> None: ...

    async def cache_stats(self) -> dict:
        """`{"entries": int, "bytes": int}` of live entries, for /health."""
        ...

    # --- jobs ------------------------------------------------------------------------------
    async def put_job(self, job: JobRecord, ttl: float) -> None:
        """Create (or overwrite) `job`; it is forgotten `ttl` seconds from now."""
        ...

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job, or None when unknown or expired."""
        ...

    async def swap_job(self, job: JobRecord, expect: frozenset[str], ttl: float) -> bool:
        """Replace the stored job with the same id by `job` only if the stored one exists, has
        not expired and its status is in `expect` (compare-and-set); its expiry becomes `ttl`
        seconds from now. True when replaced, False (nothing changed) otherwise."""
        ...

    # --- health ------------------------------------------------------------------------------
    async def status(self) -> dict:
        """`{"backend": name, "ok": bool, "detail": str}` for /health; never credentials."""
        ...


# --- batches and files (issue 10) -------------------------------------------------------------
#
# Two kinds of durable state for the Files and Batch APIs, on every back-end:
# - documents: small JSON objects by (kind, id), e.g. a file's metadata or a batch object.
#   `patch_doc` is a compare-and-set, so status changes (cancel vs. finish) never race.
# - batch lines: a work queue per batch. A line is claimed by one runner at a time with a
#   lease; a claim whose lease lapsed (its runner died) is taken over. A line's outcome is
#   recorded once (the first `finish_line` wins) together with the batch's counters, so
#   progress counts are exact across replicas. Redis builds this on a Stream with a consumer
#   group (XREADGROUP / XAUTOCLAIM / XACK); SQLite on rows changed in IMMEDIATE transactions.

LINE_OUTCOMES = ("completed", "failed", "expired", "cancelled")


class StoreUnavailable(RuntimeError):
    """Shared state that has no sensible local stand-in (a batch queue) cannot be reached."""


@dataclass(frozen=True)
class LineClaim:
    """One batch line, held by one runner until it is finished or released."""

    batch: str
    index: int  # the line's position in the input file, from 0
    payload: str  # the input line as JSON text
    token: str  # the back-end's handle on this claim (e.g. a Redis stream entry id)


class BatchStateStore(Protocol):
    async def put_doc(self, kind: str, doc_id: str, doc: dict) -> None: ...

    async def get_doc(self, kind: str, doc_id: str) -> dict | None: ...

    async def list_docs(self, kind: str) -> list[dict]:
        """Every document of a kind, in no particular order."""
        ...

    async def patch_doc(
        self, kind: str, doc_id: str, changes: dict, when: dict | None = None
    ) -> dict | None:
        """Merge `changes` into the document if each `when` field holds the given value (a
        list or tuple: any of its values; a missing field counts as None). Returns the new
        document, or None when it does not exist or the condition failed."""
        ...

    async def delete_doc(self, kind: str, doc_id: str) -> bool: ...

    async def add_lines(self, batch: str, payloads: list[str], ttl: float) -> None:
        """Queue a batch's lines (index = position in `payloads`); forgotten after `ttl` s."""
        ...

    async def claim_line(self, batch: str, worker: str, lease: float) -> LineClaim | None:
        """A line nobody holds: first one held longer than `lease` seconds (its runner died),
        else one not handed out yet, and only then one handed back (`release_line`), so a
        line a runner could not run now never keeps the lines behind it waiting. Every
        runner passes the same lease, the `BATCH_LINE_LEASE_SECONDS` setting."""
        ...

    async def release_line(self, claim: LineClaim) -> None:
        """Give an unfinished line back (it was not run): it may be claimed again at once,
        behind the lines not handed out yet."""
        ...

    async def finish_line(
        self, claim: LineClaim, outcome: str, result: str, neurons: float = 0.0
    ) -> dict | None:
        """Record a line's outcome (one of LINE_OUTCOMES) and its result JSON, once.

        Returns the batch's counts after this line (`line_counts`), or None when the line
        already had an outcome (another runner finished it first), changing nothing.
        """
        ...

    async def line_counts(self, batch: str) -> dict:
        """`{"completed", "failed", "expired", "cancelled": int, "neurons": float}`."""
        ...

    async def line_results(self, batch: str) -> list[tuple[int, str, str]]:
        """(index, outcome, result JSON) of every finished line, by index."""
        ...

    async def drop_lines(self, batch: str) -> None:
        """Forget a batch's queue, results and counts (its output file has been written)."""
        ...


def empty_line_counts() -> dict:
    return {"completed": 0, "failed": 0, "expired": 0, "cancelled": 0, "neurons": 0.0}


def doc_matches(doc: dict, when: dict | None) -> bool:
    """The `patch_doc` condition, shared by the back-ends that check it in Python."""
    for field_name, wanted in (when or {}).items():
        value = doc.get(field_name)
        if isinstance(wanted, list | tuple):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True
