"""The default work queue: one table in a SQLite file under `DATA_DIR`.

Like the state store (`store/sqlite.py`): one worker thread owns the connection, WAL mode,
`synchronous=NORMAL` (a committed `put` survives `kill -9`), and every change runs in
`BEGIN IMMEDIATE`, so "find the oldest free entry and take it" is one atomic step even for
several processes on the same file (`serve --workers N`). Leases are on the injected clock.
The queue has a file of its own so its writes never wait behind the neuron ledger's.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from flux_proxy.clock import Clock
from flux_proxy.store.sqlite import connect_wal
from flux_proxy.work.queue import Delivery

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_by_kind ON queue_entries (kind, seq);
"""


class SqliteQueue:
    name = "sqlite"

    def __init__(self, path: Path, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock = clock or Clock()
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- plumbing ---------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("SqliteQueue used before open()")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _connect(self) -> None:
        self._conn = connect_wal(self.path)
        self._write(lambda c: [c.execute(s) for s in _SCHEMA.split(";") if s.strip()])

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue")
        try:
            await self._run(self._connect)
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

    # --- the queue --------------------------------------------------------------------------
    async def put(self, kind: str, entry_id: str, payload: bytes) -> None:
        await self._run(
            self._write,
            lambda c: c.execute(
                "INSERT INTO queue_entries (kind, entry_id, payload) VALUES (?, ?, ?)",
                (kind, entry_id, bytes(payload)),
            ),
        )

    async def claim(self, kind: str, consumer: str, lease: float) -> Delivery | None:
        now = self._clock.now()
        # A holder tag per claim: a consumer that claims, dies and comes back under the same
        # name must not be able to renew or release the lease someone else now holds.
        holder = f"{consumer} {secrets.token_hex(4)}"

        def take(conn: sqlite3.Connection) -> Delivery | None:
            row = conn.execute(
                "SELECT seq, entry_id, payload, attempts FROM queue_entries "
                "WHERE kind = ? AND (holder IS NULL OR lease_until <= ?) ORDER BY seq LIMIT 1",
                (kind, now),
            ).fetchone()
            if row is None:
                return None
            seq, entry_id, payload, attempts = row
            conn.execute(
                "UPDATE queue_entries SET holder = ?, lease_until = ?, attempts = ? WHERE seq = ?",
                (holder, now + lease, attempts + 1, seq),
            )
            return Delivery(kind, entry_id, bytes(payload), attempts + 1, holder, str(seq))

        return await self._run(self._write, take)

    async def renew(self, delivery: Delivery, lease: float) -> bool:
        until = self._clock.now() + lease

        def extend(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE queue_entries SET lease_until = ? WHERE seq = ? AND holder = ?",
                (until, int(delivery.receipt), delivery.consumer),
            )
            return cursor.rowcount == 1

        return await self._run(self._write, extend)

    async def release(self, delivery: Delivery) -> None:
        await self._run(
            self._write,
            lambda c: c.execute(
                "UPDATE queue_entries SET holder = NULL, lease_until = 0 "
                "WHERE seq = ? AND holder = ?",
                (int(delivery.receipt), delivery.consumer),
            ),
        )

    async def ack(self, delivery: Delivery) -> None:
        await self._run(
            self._write,
            lambda c: c.execute(
                "DELETE FROM queue_entries WHERE seq = ?", (int(delivery.receipt),)
            ),
        )

    async def depth(self, kind: str) -> int:
        def count() -> int:
            assert self._conn is not None
            (n,) = self._conn.execute(
                "SELECT COUNT(*) FROM queue_entries WHERE kind = ?", (kind,)
            ).fetchone()
            return n

        return await self._run(count)
