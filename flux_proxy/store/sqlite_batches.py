"""The SQLite store's batches and files section (issue 10): documents, and each batch's lines
with their claims.

Mixed into `SqliteStore`, whose `_run`, `_write`, `_db` and `_clock` own the connection.
"""

from __future__ import annotations

import json
import sqlite3

from flux_proxy.store.base import LineClaim, doc_matches, empty_line_counts

BATCHES_SCHEMA = """
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
CREATE INDEX IF NOT EXISTS batch_lines_by_tries ON batch_lines (batch, claims, idx)
    WHERE outcome IS NULL;
"""


class SqliteBatches:
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
            # A dead holder's line first; then the line tried fewest times, so a line handed
            # back unrun (e.g. too dear for today) waits behind the lines not tried yet.
            row = (
                conn.execute(
                    "SELECT idx, payload, claims FROM batch_lines WHERE batch = ? "
                    "AND outcome IS NULL AND holder IS NOT NULL AND lease_until <= ? LIMIT 1",
                    (batch, now),
                ).fetchone()
                or conn.execute(
                    "SELECT idx, payload, claims FROM batch_lines "
                    "WHERE batch = ? AND outcome IS NULL AND holder IS NULL "
                    "ORDER BY claims, idx LIMIT 1",
                    (batch,),
                ).fetchone()
            )
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
