"""`JobStart`: the moment a job's first upstream call is about to be sent, which is the moment
it stops being cancellable.

A worker takes a queued job and leaves its record `queued` while it validates, looks in the
cache, waits for a repeat or for an account slot: none of that costs anything, so the owner can
still cancel it. Just before the first call is sent (the pool awaits `CallProgress.before_send`,
holding a reservation and a slot that it gives back if this raises), the record is moved
`queued -> in_progress` by compare-and-set. A cancel is `queued -> cancelled` by the same
compare-and-set, so exactly one of them wins: either the job is cancelled and no call is sent,
or the call is sent and the cancel answers 409.

Only the first call does the swap; the others of an `n` > 1 job (and failovers) find it done.
A job already `in_progress` when taken (its worker died) starts open: it may have been sent.
When the store cannot be asked (Redis away), nothing is sent and `unsure` tells the worker to
hand the job back to the queue rather than fail it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError
from flux_proxy.store.base import JobRecord, StateStore

QUEUED = frozenset({"queued"})


def job_cancelled(job_id: str) -> ApiError:
    return ApiError(409, f"job {job_id} was cancelled before it was sent", code="job_cancelled")


def store_unavailable() -> ApiError:
    return ApiError(503, "the job could not be started; it will be retried", code="unavailable")


class JobStart:
    def __init__(self, store: StateStore, clock: Clock, job: JobRecord, ttl: float) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self.job = job  # the record as last written by this worker
        self.refused = False  # someone else moved the record first (a cancel, another worker)
        self.unsure = False  # the store failed: the record is as it was, still queued
        self._lock = asyncio.Lock()

    @property
    def sent(self) -> bool:
        return self.job.status == "in_progress"

    async def __call__(self) -> None:
        if self.sent:
            return
        async with self._lock:  # the n images of a job reach here together; one swap
            if self.sent:
                return
            if self.refused:
                raise job_cancelled(self.job.id)
            if self.unsure:
                raise store_unavailable()
            started = replace(
                self.job,
                status="in_progress",
                started_at=self.clock.now(),
                attempts=self.job.attempts + 1,
            )
            try:
                swapped = await self.store.swap_job(started, QUEUED, self.ttl)
            except Exception:
                # Unknown whether it was written: the next worker reads the record and sees.
                self.unsure = True
                raise store_unavailable() from None
            if not swapped:
                self.refused = True
                raise job_cancelled(self.job.id)
            self.job = started
