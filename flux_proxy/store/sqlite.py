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

This module holds the connection, the schema and the accounts' core (blocks, the neuron
ledger, blobs, housekeeping); each later feature is a mixin of its own, with its tables:
`sqlite_work.py` (markers, kept results, the seeded cache), `sqlite_jobs.py`,
`sqlite_batches.py` (documents and batch lines) and `sqlite_keys.py` (key quotas and usage).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from flux_proxy.clock import Clock, utc_day
from flux_proxy.store.base import Block, Reservation, Usage
from flux_proxy.store.sqlite_batches import BATCHES_SCHEMA, SqliteBatches
from flux_proxy.store.sqlite_jobs import JOBS_SCHEMA, SqliteJobs
from flux_proxy.store.sqlite_keys import KEYS_SCHEMA, SqliteKeys
from flux_proxy.store.sqlite_work import WORK_SCHEMA, WORK_TRIGGERS, SqliteWork

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
"""

# Each feature keeps its tables next to its methods; the order is the one the tables were
# created in before the split.
_SCHEMA += WORK_SCHEMA + JOBS_SCHEMA + BATCHES_SCHEMA + KEYS_SCHEMA


def connect_wal(path: Path) -> sqlite3.Connection:
    """A connection to `path` in WAL mode that several processes can share safely; the state
    store and the work queue (`work/queue_sqlite.py`) both open their files this way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; callers say BEGIN IMMEDIATE themselves.
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Switching to WAL needs a moment of exclusive access; another process opening the same
    # file at the same instant can make it report "locked", so retry briefly.
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
    return conn


class SqliteStore(SqliteWork, SqliteJobs, SqliteBatches, SqliteKeys):
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
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._conn = connect_wal(self.path)
        statements = [s for s in _SCHEMA.split(";") if s.strip()] + list(WORK_TRIGGERS)
        self._write(lambda c: [c.execute(s) for s in statements])

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


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
