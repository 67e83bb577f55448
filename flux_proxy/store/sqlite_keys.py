"""The SQLite store's key quotas and usage section.

One row per (day, key, account, model); a key's daily totals are the sums of its rows, so
there is one source of truth for quotas and /v1/usage.

Mixed into `SqliteStore`, whose `_run`, `_write`, `_db` and `_clock` own the connection.
"""

from __future__ import annotations

import sqlite3
import uuid

from flux_proxy.clock import utc_day
from flux_proxy.store.base import USAGE_COUNTERS, KeyReservation, KeyUsage, UsageRow

KEYS_SCHEMA = """
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


class SqliteKeys:
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
