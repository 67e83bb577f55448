"""The default state store: one SQLite file under `data_dir`, shared safely by several processes.

Why it looks like this:
- sqlite3 is blocking, so every call runs on one dedicated worker thread that owns the
  connection; the event loop never waits on disk.
- WAL mode lets readers and one writer work at once; every write runs in `BEGIN IMMEDIATE`,
  which takes the write lock up front, so "check the budget, then reserve" is atomic even
  across processes on the same file (others wait on `busy_timeout`, they do not fail).
- `synchronous=NORMAL` in WAL mode keeps every committed transaction through a `kill -9` of
  the process (the OS already holds the write); only a power cut could lose the last few.
- Blobs (URL-response images, megabytes each) are plain files under `data_dir/images/`,
  written to a temp file and `os.replace`d into place, so a reader never sees half an image;
  the table only holds their names, content types and expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from flux_proxy.clock import Clock, utc_day
from flux_proxy.store.base import (
    USAGE_COUNTERS,
    Block,
    JobRecord,
    KeyReservation,
    KeyUsage,
    LineClaim,
    Reservation,
    Usage,
    UsageRow,
    doc_matches,
    empty_line_counts,
)
from flux_proxy.store.job_codec import job_from_parts, job_head

T = TypeVar("T")

USAGE_KEEP_DAYS = 3  # usage rows older than this are history nobody reads
SWEEP_INTERVAL = 300.0  # seconds between sweeps piggybacked on put_blob / settle
ORPHAN_FILE_AGE = 3600.0  # a blob file with no row, older than this, was left by a crash
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    account TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    until REAL,
    reason TEXT NOT NULL,
    code INTEGER,
    since REAL
);
CREATE TABLE IF NOT EXISTS usage (
    account TEXT NOT NULL,
    day TEXT NOT NULL,
    used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (account, day)
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    day TEXT NOT NULL,
    amount REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_account ON reservations (account, day);
CREATE INDEX IF NOT EXISTS reservations_by_expiry ON reservations (expires_at);
CREATE TABLE IF NOT EXISTS blobs (
    key TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    content_type TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_by_expiry ON blobs (expires_at);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_expiry ON results (expires_at);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    used_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_by_use ON cache (used_at);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    head BLOB NOT NULL,
    request BLOB NOT NULL,
    result BLOB,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at);
"""

# Batches and files (issue 10): documents, and each batch's lines with their claims.
_SCHEMA += """
CREATE TABLE IF NOT EXISTS docs (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch TEXT NOT NULL,
    idx INTEGER NOT NULL,
    payload TEXT NOT NULL,
    outcome TEXT,
    result TEXT,
    neurons REAL NOT NULL DEFAULT 0,
    holder TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 0,
    forget_at REAL NOT NULL,
    PRIMARY KEY (batch, idx)
);
CREATE INDEX IF NOT EXISTS batch_lines_open ON batch_lines (batch, outcome, lease_until);
"""

# --- key quotas and usage: one row per (day, key, account, model); a key's daily totals are
# the sums of its rows, so there is one source of truth for quotas and /v1/usage.
_SCHEMA += """
CREATE TABLE IF NOT EXISTS key_usage (
    day TEXT NOT NULL,
    key TEXT NOT NULL,
    account TEXT NOT NULL,
    model TEXT NOT NULL,
    images INTEGER NOT NULL DEFAULT 0,
    neurons REAL NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    cache_hits INTEGER NOT NULL DEFAULT 0,
    neurons_saved REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key, account, model)
);
CREATE INDEX IF NOT EXISTS key_usage_by_key ON key_usage (key, day);
CREATE TABLE IF NOT EXISTS key_reservations (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    day TEXT NOT NULL,
    images INTEGER NOT NULL,
    neurons REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS key_reservations_by_key ON key_reservations (key, day);
"""


class SqliteStore:
    name = "sqlite"

    def __init__(self, path: Path, clock: Clock | None = None, blob_dir: Path | None = None):
        self.path = Path(path)
        self.blob_dir = Path(blob_dir) if blob_dir is not None else self.path.parent / "images"
        self._clock = clock or Clock()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_sweep = float("-inf")

    # --- plumbing ---------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("SqliteStore used before open()")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in one IMMEDIATE transaction (worker thread only)."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; we say BEGIN IMMEDIATE ourselves.
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Switching to WAL needs a moment of exclusive access; another process opening the
        # same file at the same instant can make it report "locked", so retry briefly.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn
        self._write(lambda c: [c.execute(s) for s in _SCHEMA.split(";") if s.strip()])

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            await self._run(self._connect)
            await self.sweep()
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._disconnect)
        self._executor.shutdown(wait=True)
        self._executor = None

    # --- blocks -----------------------------------------------------------------------------
    async def get_blocks(self, accounts: list[str]) -> dict[str, Block]:
        if not accounts:
            return {}
        return await self._run(self._get_blocks, list(accounts))

    def _get_blocks(self, accounts: list[str]) -> dict[str, Block]:
        marks = ",".join("?" * len(accounts))
        rows = self._db().execute(
            f"SELECT account, kind, until, reason, code, since FROM blocks "
            f"WHERE account IN ({marks})",
            accounts,
        )
        return {
            account: Block(kind=kind, until=until, reason=reason, code=code, since=since)
            for account, kind, until, reason, code, since in rows
        }

    async def set_block(self, account: str, block: Block) -> None:
        await self._run(
            self._write,
            lambda c: c.execute(
                "INSERT OR REPLACE INTO blocks (account, kind, until, reason, code, since) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (account, block.kind, block.until, block.reason, block.code, block.since),
            ),
        )

    async def clear_block(self, account: str) -> None:
        await self._run(
            self._write, lambda c: c.execute("DELETE FROM blocks WHERE account = ?", (account,))
        )

    # --- neuron ledger ----------------------------------------------------------------------
    async def try_reserve(
        self, account: str, day: str, amount: float, budget: float | None, ttl: float
    ) -> Reservation | None:
        reservation = Reservation(uuid.uuid4().hex, account, day, float(amount))
        now = self._clock.now()
        granted = await self._run(self._write, _reserve, reservation, budget, now, now + ttl)
        return reservation if granted else None

    async def settle(self, reservation: Reservation, actual: float) -> None:
        def settle(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
            _add_spend(conn, reservation.account, reservation.day, actual)

        await self._run(self._write, settle)
        await self._maybe_sweep()

    async def release(self, reservation: Reservation) -> None:
        await self._run(
            self._write,
            lambda c: c.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,)),
        )

    async def record_spend(self, account: str, day: str, amount: float) -> None:
        await self._run(self._write, _add_spend, account, day, amount)

    async def usage(self, accounts: list[str], day: str) -> dict[str, Usage]:
        if not accounts:
            return {}
        return await self._run(self._usage, list(accounts), day, self._clock.now())

    def _usage(self, accounts: list[str], day: str, now: float) -> dict[str, Usage]:
        conn = self._db()
        marks = ",".join("?" * len(accounts))
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            used = dict(
                conn.execute(
                    f"SELECT account, used FROM usage WHERE day = ? AND account IN ({marks})",
                    [day, *accounts],
                )
            )
            reserved = dict(
                conn.execute(
                    f"SELECT account, SUM(amount) FROM reservations "
                    f"WHERE day = ? AND expires_at > ? AND account IN ({marks}) "
                    f"GROUP BY account",
                    [day, now, *accounts],
                )
            )
        finally:
            conn.execute("COMMIT")
        return {a: Usage(used.get(a, 0.0), reserved.get(a, 0.0)) for a in accounts}

    # --- blobs ------------------------------------------------------------------------------
    async def put_blob(self, key: str, data: bytes, content_type: str, ttl: float) -> None:
        await self._run(self._put_blob, key, data, content_type, self._clock.now() + ttl)
        await self._maybe_sweep()

    def _put_blob(self, key: str, data: bytes, content_type: str, expires_at: float) -> None:
        # A fresh file name per put: a sweep deleting an old version can never hit a new one.
        name = uuid.uuid4().hex
        temp = self.blob_dir / f".tmp-{name}"
        temp.write_bytes(data)
        os.replace(temp, self.blob_dir / name)

        def record(conn: sqlite3.Connection) -> str | None:
            old = conn.execute("SELECT file FROM blobs WHERE key = ?", (key,)).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO blobs (key, file, content_type, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (key, name, content_type, expires_at),
            )
            return old[0] if old else None

        try:
            replaced = self._write(record)
        except BaseException:
            _unlink(self.blob_dir / name)
            raise
        if replaced:
            _unlink(self.blob_dir / replaced)

    async def get_blob(self, key: str) -> tuple[bytes, str] | None:
        return await self._run(self._get_blob, key, self._clock.now())

    def _get_blob(self, key: str, now: float) -> tuple[bytes, str] | None:
        row = (
            self._db()
            .execute("SELECT file, content_type, expires_at FROM blobs WHERE key = ?", (key,))
            .fetchone()
        )
        if row is None or row[2] <= now:
            return None
        try:
            return (self.blob_dir / row[0]).read_bytes(), row[1]
        except FileNotFoundError:
            return None

    # --- key quotas and usage ---------------------------------------------------------------
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
        hold = KeyReservation(uuid.uuid4().hex, key, day, int(images), float(neurons))
        now = self._clock.now()
        granted = await self._run(
            self._write, _reserve_key, hold, max_images, max_neurons, now, now + ttl
        )
        return hold if granted else None

    async def settle_key(
        self, reservation: KeyReservation, rows: list[UsageRow], keep_days: int
    ) -> None:
        oldest = utc_day(self._clock.now() - keep_days * 86400)

        def settle(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM key_reservations WHERE id = ?", (reservation.id,))
            _add_usage_rows(conn, rows, oldest)

        await self._run(self._write, settle)

    async def release_key(self, reservation: KeyReservation) -> None:
        await self._run(
            self._write,
            lambda c: c.execute("DELETE FROM key_reservations WHERE id = ?", (reservation.id,)),
        )

    async def record_usage(self, rows: list[UsageRow], keep_days: int) -> None:
        oldest = utc_day(self._clock.now() - keep_days * 86400)
        await self._run(self._write, _add_usage_rows, rows, oldest)

    async def key_usage(self, key: str, day: str) -> KeyUsage:
        return await self._run(self._key_usage, key, day, self._clock.now())

    def _key_usage(self, key: str, day: str, now: float) -> KeyUsage:
        conn = self._db()
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            return _key_totals(conn, key, day, now)
        finally:
            conn.execute("COMMIT")

    async def usage_rows(
        self, first_day: str, last_day: str, key: str | None = None
    ) -> list[UsageRow]:
        query = (
            f"SELECT day, key, account, model, {', '.join(USAGE_COUNTERS)} FROM key_usage "
            "WHERE day >= ? AND day <= ?"
        )
        args: list[str] = [first_day, last_day]
        if key is not None:
            query += " AND key = ?"
            args.append(key)
        rows = await self._run(lambda: self._db().execute(query, args).fetchall())
        return [UsageRow(*row) for row in rows]

    # --- work ---
    # Results and cache entries (an image or a few, megabytes at most) are BLOB rows: one
    # transaction writes or evicts them, so a crash never leaves a half entry. Recency for
    # the LRU is a counter, not the clock: two uses in the same instant still have an order.
    async def claim(self, key: str, holder: str, ttl: float) -> str | None:
        return await self._run(self._write, _claim, key, holder, self._clock.now(), ttl)

    async def holder_of(self, key: str) -> str | None:
        row = await self._run(
            lambda: (
                self._db()
                .execute(
                    "SELECT holder FROM claims WHERE key = ? AND expires_at > ?",
                    (key, self._clock.now()),
                )
                .fetchone()
            )
        )
        return row[0] if row else None

    async def unclaim(self, key: str, holder: str) -> None:
        await self._run(
            self._write,
            lambda c: c.execute("DELETE FROM claims WHERE key = ? AND holder = ?", (key, holder)),
        )

    async def put_result(self, key: str, data: bytes, ttl: float) -> None:
        now = self._clock.now()

        def put(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM results WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO results (key, data, expires_at) VALUES (?, ?, ?)",
                (key, data, now + ttl),
            )

        await self._run(self._write, put)

    async def get_result(self, key: str) -> bytes | None:
        row = await self._run(
            lambda: (
                self._db()
                .execute(
                    "SELECT data FROM results WHERE key = ? AND expires_at > ?",
                    (key, self._clock.now()),
                )
                .fetchone()
            )
        )
        return bytes(row[0]) if row else None

    async def cache_put(self, key: str, data: bytes, ttl: float, max_bytes: int) -> None:
        await self._run(self._write, _cache_put, key, data, self._clock.now(), ttl, max_bytes)

    async def cache_get(self, key: str) -> bytes | None:
        return await self._run(self._write, _cache_get, key, self._clock.now())

    async def cache_drop(self, key: str) -> None:
        await self._run(self._write, lambda c: c.execute("DELETE FROM cache WHERE key = ?", (key,)))

    async def cache_stats(self) -> dict:
        now = self._clock.now()
        entries, size = await self._run(
            lambda: (
                self._db()
                .execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache WHERE expires_at > ?",
                    (now,),
                )
                .fetchone()
            )
        )
        return {"entries": entries, "bytes": size}

    # --- jobs ---
    async def put_job(self, job: JobRecord, ttl: float) -> None:
        row = _job_row(job, self._clock.now() + ttl)
        await self._run(
            self._write,
            lambda c: c.execute(
                "INSERT OR REPLACE INTO jobs (id, status, head, request, result, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                row,
            ),
        )
        await self._maybe_sweep()

    async def get_job(self, job_id: str) -> JobRecord | None:
        def read() -> JobRecord | None:
            found = (
                self._db()
                .execute(
                    "SELECT head, request, result FROM jobs WHERE id = ? AND expires_at > ?",
                    (job_id, self._clock.now()),
                )
                .fetchone()
            )
            return job_from_parts(*found) if found else None

        return await self._run(read)

    async def swap_job(self, job: JobRecord, expect: frozenset[str], ttl: float) -> bool:
        now = self._clock.now()
        row = _job_row(job, now + ttl)
        statuses = sorted(expect)

        def swap(conn: sqlite3.Connection) -> bool:
            marks = ",".join("?" * len(statuses))
            cursor = conn.execute(
                f"UPDATE jobs SET status = ?, head = ?, request = ?, result = ?, expires_at = ? "
                f"WHERE id = ? AND expires_at > ? AND status IN ({marks})",
                (*row[1:], row[0], now, *statuses),
            )
            return cursor.rowcount == 1

        return await self._run(self._write, swap) if statuses else False

    # --- housekeeping -----------------------------------------------------------------------
    async def _maybe_sweep(self) -> None:
        """Housekeeping piggybacks on busy calls, so no timer task is needed."""
        if self._clock.now() - self._last_sweep >= SWEEP_INTERVAL:
            await self.sweep()

    async def sweep(self) -> None:
        """Delete expired blobs (rows and files), lapsed reservations and old usage days."""
        now = self._clock.now()
        self._last_sweep = now
        await self._run(self._sweep, now)

    def _sweep(self, now: float) -> None:
        oldest_day = utc_day(now - USAGE_KEEP_DAYS * 86400)

        def prune(conn: sqlite3.Connection) -> list[str]:
            conn.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM usage WHERE day < ?", (oldest_day,))
            files = [
                f for (f,) in conn.execute("SELECT file FROM blobs WHERE expires_at <= ?", (now,))
            ]
            conn.execute("DELETE FROM blobs WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM jobs WHERE expires_at <= ?", (now,))
            for table in ("claims", "results", "cache"):
                conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))
            return files

        for name in self._write(prune):
            _unlink(self.blob_dir / name)
        self._remove_orphan_files()

    def _remove_orphan_files(self) -> None:
        """Files a crashed process wrote but never recorded (or never renamed)."""
        known = {f for (f,) in self._db().execute("SELECT file FROM blobs")}
        cutoff = time.time() - ORPHAN_FILE_AGE  # file ages are real time, not the store's clock
        for entry in os.scandir(self.blob_dir):
            if entry.name in known or not entry.is_file():
                continue
            try:
                if entry.stat().st_mtime < cutoff:
                    _unlink(Path(entry.path))
            except FileNotFoundError:
                continue

    # --- health -----------------------------------------------------------------------------
    async def status(self) -> dict:
        try:
            await self._run(lambda: self._db().execute("SELECT 1").fetchone())
        except Exception as exc:
            return {
                "backend": self.name,
                "ok": False,
                "detail": f"sqlite error: {type(exc).__name__}",
            }
        return {"backend": self.name, "ok": True, "detail": f"state in {self.path}"}

    # --- batches and files (issue 10) -----------------------------------------------------
    async def put_doc(self, kind: str, doc_id: str, doc: dict) -> None:
        text = json.dumps(doc)
        await self._run(
            self._write,
            lambda c: c.execute(
                "INSERT OR REPLACE INTO docs (kind, id, doc) VALUES (?, ?, ?)", (kind, doc_id, text)
            ),
        )

    async def get_doc(self, kind: str, doc_id: str) -> dict | None:
        def read() -> dict | None:
            row = (
                self._db()
                .execute("SELECT doc FROM docs WHERE kind = ? AND id = ?", (kind, doc_id))
                .fetchone()
            )
            return json.loads(row[0]) if row else None

        return await self._run(read)

    async def list_docs(self, kind: str) -> list[dict]:
        def read() -> list[dict]:
            rows = self._db().execute("SELECT doc FROM docs WHERE kind = ?", (kind,))
            return [json.loads(text) for (text,) in rows]

        return await self._run(read)

    async def patch_doc(
        self, kind: str, doc_id: str, changes: dict, when: dict | None = None
    ) -> dict | None:
        def patch(conn: sqlite3.Connection) -> dict | None:
            row = conn.execute(
                "SELECT doc FROM docs WHERE kind = ? AND id = ?", (kind, doc_id)
            ).fetchone()
            if row is None:
                return None
            doc = json.loads(row[0])
            if not doc_matches(doc, when):
                return None
            doc.update(changes)
            conn.execute(
                "UPDATE docs SET doc = ? WHERE kind = ? AND id = ?", (json.dumps(doc), kind, doc_id)
            )
            return doc

        return await self._run(self._write, patch)

    async def delete_doc(self, kind: str, doc_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM docs WHERE kind = ? AND id = ?", (kind, doc_id))
            return cursor.rowcount > 0

        return await self._run(self._write, delete)

    async def add_lines(self, batch: str, payloads: list[str], ttl: float) -> None:
        forget_at = self._clock.now() + ttl

        def add(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM batch_lines WHERE forget_at <= ?", (self._clock.now(),))
            conn.executemany(
                "INSERT OR REPLACE INTO batch_lines (batch, idx, payload, forget_at) "
                "VALUES (?, ?, ?, ?)",
                ((batch, index, payload, forget_at) for index, payload in enumerate(payloads)),
            )

        await self._run(self._write, add)

    async def claim_line(self, batch: str, worker: str, lease: float) -> LineClaim | None:
        now = self._clock.now()

        def claim(conn: sqlite3.Connection) -> LineClaim | None:
            row = conn.execute(
                "SELECT idx, payload, claims FROM batch_lines "
                "WHERE batch = ? AND outcome IS NULL AND (holder IS NULL OR lease_until <= ?) "
                "ORDER BY idx LIMIT 1",
                (batch, now),
            ).fetchone()
            if row is None:
                return None
            index, payload, claims = row
            conn.execute(
                "UPDATE batch_lines SET holder = ?, lease_until = ?, claims = ? "
                "WHERE batch = ? AND idx = ?",
                (worker, now + lease, claims + 1, batch, index),
            )
            return LineClaim(batch, index, payload, f"{worker}/{claims + 1}")

        return await self._run(self._write, claim)

    async def release_line(self, claim: LineClaim) -> None:
        worker, _, claims = claim.token.rpartition("/")
        await self._run(
            self._write,
            lambda c: c.execute(
                "UPDATE batch_lines SET holder = NULL WHERE batch = ? AND idx = ? "
                "AND outcome IS NULL AND holder = ? AND claims = ?",
                (claim.batch, claim.index, worker, int(claims)),
            ),
        )

    async def finish_line(
        self, claim: LineClaim, outcome: str, result: str, neurons: float = 0.0
    ) -> dict | None:
        def finish(conn: sqlite3.Connection) -> dict | None:
            cursor = conn.execute(
                "UPDATE batch_lines SET outcome = ?, result = ?, neurons = ?, holder = NULL "
                "WHERE batch = ? AND idx = ? AND outcome IS NULL",
                (outcome, result, float(neurons), claim.batch, claim.index),
            )
            if cursor.rowcount == 0:
                return None
            return _counts(conn, claim.batch)

        return await self._run(self._write, finish)

    async def line_counts(self, batch: str) -> dict:
        return await self._run(lambda: _counts(self._db(), batch))

    async def line_results(self, batch: str) -> list[tuple[int, str, str]]:
        def read() -> list[tuple[int, str, str]]:
            rows = self._db().execute(
                "SELECT idx, outcome, result FROM batch_lines "
                "WHERE batch = ? AND outcome IS NOT NULL ORDER BY idx",
                (batch,),
            )
            return [(index, outcome, result) for index, outcome, result in rows]

        return await self._run(read)

    async def drop_lines(self, batch: str) -> None:
        await self._run(
            self._write, lambda c: c.execute("DELETE FROM batch_lines WHERE batch = ?", (batch,))
        )


def _reserve(
    conn: sqlite3.Connection,
    reservation: Reservation,
    budget: float | None,
    now: float,
    expires_at: float,
) -> bool:
    conn.execute("DELETE FROM reservations WHERE expires_at <= ?", (now,))
    if budget is not None:
        (used,) = conn.execute(
            "SELECT COALESCE(SUM(used), 0) FROM usage WHERE account = ? AND day = ?",
            (reservation.account, reservation.day),
        ).fetchone()
        (held,) = conn.execute(
            "SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE account = ? AND day = ?",
            (reservation.account, reservation.day),
        ).fetchone()
        if used + held + reservation.amount > budget:
            return False
    conn.execute(
        "INSERT INTO reservations (id, account, day, amount, expires_at) VALUES (?, ?, ?, ?, ?)",
        (reservation.id, reservation.account, reservation.day, reservation.amount, expires_at),
    )
    return True


def _add_spend(conn: sqlite3.Connection, account: str, day: str, amount: float) -> None:
    conn.execute(
        "INSERT INTO usage (account, day, used) VALUES (?, ?, ?) "
        "ON CONFLICT (account, day) DO UPDATE SET used = used + excluded.used",
        (account, day, float(amount)),
    )


def _claim(conn: sqlite3.Connection, key: str, holder: str, now: float, ttl: float) -> str | None:
    row = conn.execute(
        "SELECT holder FROM claims WHERE key = ? AND expires_at > ?", (key, now)
    ).fetchone()
    if row is not None:
        return row[0]
    conn.execute(
        "INSERT OR REPLACE INTO claims (key, holder, expires_at) VALUES (?, ?, ?)",
        (key, holder, now + ttl),
    )
    return None


def _next_use(conn: sqlite3.Connection) -> int:
    (latest,) = conn.execute("SELECT COALESCE(MAX(used_at), 0) FROM cache").fetchone()
    return latest + 1


def _cache_put(
    conn: sqlite3.Connection, key: str, data: bytes, now: float, ttl: float, max_bytes: int
) -> None:
    conn.execute("DELETE FROM cache WHERE key = ? OR expires_at <= ?", (key, now))
    if len(data) > max_bytes:
        return
    conn.execute(
        "INSERT INTO cache (key, data, size, expires_at, used_at) VALUES (?, ?, ?, ?, ?)",
        (key, data, len(data), now + ttl, _next_use(conn)),
    )
    (total,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM cache").fetchone()
    for old_key, size in conn.execute("SELECT key, size FROM cache ORDER BY used_at").fetchall():
        if total <= max_bytes:
            break
        conn.execute("DELETE FROM cache WHERE key = ?", (old_key,))
        total -= size


def _cache_get(conn: sqlite3.Connection, key: str, now: float) -> bytes | None:
    row = conn.execute(
        "SELECT data FROM cache WHERE key = ? AND expires_at > ?", (key, now)
    ).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE cache SET used_at = ? WHERE key = ?", (_next_use(conn), key))
    return bytes(row[0])


def _job_row(job: JobRecord, expires_at: float) -> tuple:
    return (job.id, job.status, job_head(job), job.request, job.result, expires_at)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _counts(conn: sqlite3.Connection, batch: str) -> dict:
    counts = empty_line_counts()
    rows = conn.execute(
        "SELECT outcome, COUNT(*), SUM(neurons) FROM batch_lines "
        "WHERE batch = ? AND outcome IS NOT NULL GROUP BY outcome",
        (batch,),
    )
    for outcome, count, neurons in rows:
        counts[outcome] = count
        counts["neurons"] += neurons or 0.0
    return counts


# --- key quotas and usage ---------------------------------------------------------------------


def _key_totals(conn: sqlite3.Connection, key: str, day: str, now: float) -> KeyUsage:
    images, neurons = conn.execute(
        "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(neurons), 0) FROM key_usage "
        "WHERE key = ? AND day = ?",
        (key, day),
    ).fetchone()
    held_images, held_neurons = conn.execute(
        "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(neurons), 0) FROM key_reservations "
        "WHERE key = ? AND day = ? AND expires_at > ?",
        (key, day, now),
    ).fetchone()
    return KeyUsage(int(images), float(neurons), int(held_images), float(held_neurons))


def _reserve_key(
    conn: sqlite3.Connection,
    hold: KeyReservation,
    max_images: int | None,
    max_neurons: float | None,
    now: float,
    expires_at: float,
) -> bool:
    conn.execute("DELETE FROM key_reservations WHERE expires_at <= ?", (now,))
    seen = _key_totals(conn, hold.key, hold.day, now)
    if max_images is not None and seen.images + seen.reserved_images + hold.images > max_images:
        return False
    if max_neurons is not None and (
        seen.neurons + seen.reserved_neurons + hold.neurons > max_neurons
    ):
        return False
    conn.execute(
        "INSERT INTO key_reservations (id, key, day, images, neurons, expires_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (hold.id, hold.key, hold.day, hold.images, hold.neurons, expires_at),
    )
    return True


def _add_usage_rows(conn: sqlite3.Connection, rows: list[UsageRow], oldest_day: str) -> None:
    conn.execute("DELETE FROM key_usage WHERE day < ?", (oldest_day,))
    columns = ", ".join(USAGE_COUNTERS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COUNTERS)
    for row in rows:
        conn.execute(
            f"INSERT INTO key_usage (day, key, account, model, {columns}) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (day, key, account, model) DO UPDATE SET {updates}",
            (
                row.day,
                row.key,
                row.account,
                row.model,
                *(getattr(row, c) for c in USAGE_COUNTERS),
            ),
        )
