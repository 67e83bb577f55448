"""The SQLite store's jobs section: durable single jobs, one row each.

Mixed into `SqliteStore`, whose `_run`, `_write`, `_db`, `_clock` and `_maybe_sweep` own the
connection and its housekeeping (the sweep deletes expired jobs).
"""

from __future__ import annotations

import sqlite3

from flux_proxy.store.base import JobRecord
from flux_proxy.store.job_codec import job_from_parts, job_head

JOBS_SCHEMA = """
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


class SqliteJobs:
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


def _job_row(job: JobRecord, expires_at: float) -> tuple:
    return (job.id, job.status, job_head(job), job.request, job.result, expires_at)
