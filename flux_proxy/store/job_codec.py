"""A `JobRecord` as the SQLite and Redis stores keep it: one small JSON head (everything but
the two byte fields) and the request and result bytes as they are, so a multi-megabyte result
is never base64-inflated or re-parsed to read a job's status."""

from __future__ import annotations

import orjson

from flux_proxy.store.base import JobRecord


def job_head(job: JobRecord) -> bytes:
    return orjson.dumps(
        {
            "id": job.id,
            "owner": job.owner,
            "kind": job.kind,
            "status": job.status,
            "created_at": job.created_at,
            "meta": job.meta,
            "started_at": job.started_at,
            "completed_at": job.completed_at,
            "error": job.error,
            "attempts": job.attempts,
        }
    )


def job_from_parts(head: bytes | str, request: bytes | None, result: bytes | None) -> JobRecord:
    fields = orjson.loads(head)
    return JobRecord(request=request or b"", result=result, **fields)
