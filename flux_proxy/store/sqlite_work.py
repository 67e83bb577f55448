"""The SQLite store's work section: in-flight markers, kept results and the seeded cache.

Results and cache entries (an image or a few, megabytes at most) are BLOB rows: one
transaction writes or evicts them, so a crash never leaves a half entry. Recency for
the LRU is a counter, not the clock: two uses in the same instant still have an order.

Mixed into `SqliteStore`, whose `_run`, `_write`, `_db` and `_clock` own the connection;
its sweep deletes the expired rows of these tables.
"""

from __future__ import annotations

import sqlite3

WORK_SCHEMA = """
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
-- The cache's total size, kept by triggers: a put needs it, and summing every row per put
-- grew with the cache. Filled from the rows the first time (a store from before it).
CREATE TABLE IF NOT EXISTS cache_total (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO cache_total (id, bytes) SELECT 0, COALESCE(SUM(size), 0) FROM cache;
"""
# Statements with `;` inside, run one by one after the schema (which is split on `;`).
WORK_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS cache_total_add AFTER INSERT ON cache "
    "BEGIN UPDATE cache_total SET bytes = bytes + NEW.size WHERE id = 0; END",
    "CREATE TRIGGER IF NOT EXISTS cache_total_drop AFTER DELETE ON cache "
    "BEGIN UPDATE cache_total SET bytes = bytes - OLD.size WHERE id = 0; END",
)

EVICT_BATCH = 64  # least recently used entries looked at per round of eviction


class SqliteWork:
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
    # Expired rows are left to the store's periodic sweep (reads skip them): a put costs
    # the same with ten entries or a hundred thousand.
    conn.execute("DELETE FROM cache WHERE key = ?", (key,))
    if len(data) > max_bytes:
        return
    conn.execute(
        "INSERT INTO cache (key, data, size, expires_at, used_at) VALUES (?, ?, ?, ?, ?)",
        (key, data, len(data), now + ttl, _next_use(conn)),
    )
    (total,) = conn.execute("SELECT bytes FROM cache_total WHERE id = 0").fetchone()
    while total > max_bytes:
        oldest = conn.execute(
            "SELECT key, size FROM cache ORDER BY used_at LIMIT ?", (EVICT_BATCH,)
        ).fetchall()
        for old_key, size in oldest:
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
