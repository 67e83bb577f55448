"""Durable single jobs: a request taken now and worked on in the background, which its owner
collects later (async image jobs; batch lines can be fed through the same service).

A job is a `JobRecord` in the state store plus one entry in the work queue (`work/queue.py`).
The record says where the job is; the queue says who works on it. Every status change is a
compare-and-set on the record, so:
- a job stays `queued` while a worker validates it and waits (for a slot, a repeat, the
  cache) and moves to `in_progress` just before its first upstream call is sent
  (`job_start.py`); a cancel and that move race on the same compare-and-set: exactly one wins,
  so a cancelled job never reaches upstream and a sent one is never cancelled;
- a queue entry delivered twice (its first worker died): the second worker finds the record
  `in_progress`, counts the call the dead worker may have sent as maybe-billed, and runs it
  again; an entry whose job is already final is just acknowledged.

API:

    service = JobService(store, queue, clock, metrics, workers=4, lease=30, result_ttl=900)
    service.register(kind, runner)        # runner(job, before_send) -> result bytes;
                                          # raise ApiError to fail; await before_send() just
                                          # before each upstream call (it raises if cancelled)
    await service.start() / await service.stop(grace)   # the app's lifespan does this
    await service.submit(owner=, kind=, request=, meta=) -> JobRecord   (status "queued")
    await service.get(job_id) -> JobRecord | None
    await service.stats() -> {"ok", "backend", "pending", "workers"}   (for /health)
    await service.cancel(job_id) -> JobRecord | None
        None: unknown. A queued job (waiting in line, or taken by a worker that has sent
        nothing yet) becomes "cancelled" (cancelling one twice is fine), and a worker of this
        process working on it stops at once (other replicas' within a lease renewal; none can
        send it); any other raises ApiError 409 `job_not_cancellable` (its call was sent).

Finished jobs (completed, failed, cancelled) are kept `result_ttl` seconds past completion;
unfinished ones `OPEN_JOB_TTL` (a week) from their last change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

from flux_proxy.clock import Clock
from flux_proxy.errors import NO_RETRY, ApiError
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.store.base import JobRecord, StateStore
from flux_proxy.work.job_start import QUEUED, JobStart
from flux_proxy.work.queue import Delivery, WorkQueue

JobRunner = Callable[[JobRecord, Callable[[], Awaitable[None]]], Awaitable[bytes]]

QUEUE_KIND = "jobs"  # the line single jobs wait in
OPEN_JOB_TTL = 7 * 86400.0
RUNNABLE = frozenset({"queued", "in_progress"})
IN_PROGRESS = frozenset({"in_progress"})
POLL_INTERVAL = 1.0  # how often an idle worker looks for entries other processes put
BACKOFF = 2.0  # after the queue itself failed (Redis away)
RECORD_ATTEMPTS = 5  # tries to record a finished job before leaving it to the lease


def new_job_id() -> str:
    return f"imgjob_{secrets.token_hex(16)}"


class JobService:
    def __init__(
        self,
        store: StateStore,
        queue: WorkQueue,
        clock: Clock,
        metrics: Metrics,
        *,
        workers: int = 4,
        lease: float = 30.0,
        result_ttl: float = 900.0,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.store = store
        self.queue = queue
        self.clock = clock
        self.metrics = metrics
        self.workers = workers
        self.lease = lease
        self.result_ttl = result_ttl
        self.poll_interval = poll_interval
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._runners: dict[str, JobRunner] = {}
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._running: dict[str, asyncio.Task] = {}  # job id -> its run, in this process
        self._queue_down = False  # said once per outage, not per worker per retry

    def register(self, kind: str, runner: JobRunner) -> None:
        self._runners[kind] = runner

    # --- what the API calls -----------------------------------------------------------------
    async def submit(
        self, *, owner: str, kind: str, request: bytes, meta: dict | None = None
    ) -> JobRecord:
        if kind not in self._runners:
            raise ValueError(f"no runner registered for job kind {kind!r}")
        job = JobRecord(
            id=new_job_id(),
            owner=owner,
            kind=kind,
            status="queued",
            created_at=self.clock.now(),
            request=request,
            meta=dict(meta or {}),
        )
        # Record first, then queue: a crash in between leaves a record nobody was told of
        # (it expires), never a queue entry without its job.
        await self.store.put_job(job, OPEN_JOB_TTL)
        await self.queue.put(QUEUE_KIND, job.id, job.id.encode())
        self._count("submitted")
        self._wake.set()
        return job

    async def get(self, job_id: str) -> JobRecord | None:
        return await self.store.get_job(job_id)

    async def cancel(self, job_id: str) -> JobRecord | None:
        job = await self.store.get_job(job_id)
        if job is None:
            return None
        if job.status == "cancelled":
            return job
        if job.status == "queued":
            cancelled = self._finished(job, "cancelled")
            if await self.store.swap_job(cancelled, QUEUED, self.result_ttl):
                self._count("cancelled")
                if (running := self._running.get(job_id)) is not None:
                    running.cancel()  # frees its slot wait and quota hold now
                return cancelled
            job = await self.store.get_job(job_id) or job  # a worker took it meanwhile
        raise ApiError(
            409,
            f"job {job_id} is {job.status} and can no longer be cancelled"
            + ("; its call was already sent upstream" if not job.final else ""),
            code="job_not_cancellable",
            headers=NO_RETRY,  # the SDKs retry a 409; a sent call stays sent
        )

    async def stats(self) -> dict:
        """For /health: jobs waiting or running in the queue (all replicas), this process's
        workers, and whether the queue answers."""
        try:
            pending = await self.queue.depth(QUEUE_KIND)
        except Exception as exc:
            return {"ok": False, "detail": f"queue unavailable ({type(exc).__name__})"}
        return {"ok": True, "backend": self.queue.name, "pending": pending, "workers": self.workers}

    # --- workers ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._work(), name=f"job-worker-{n}") for n in range(self.workers)
        ]

    def drain(self) -> None:
        """Take no more jobs (the process was told to stop); the running ones go on."""
        self._stopping = True
        self._wake.set()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop taking jobs; let the ones running finish within `grace` seconds. A job cut
        off stays `in_progress` with its queue entry held, and is taken up again after the
        lease by whichever process runs next (counted as maybe-billed)."""
        self._stopping = True
        self._wake.set()
        if not self._tasks:
            return
        _, running = await asyncio.wait(self._tasks, timeout=grace)
        for task in running:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        while not self._stopping:
            # Cleared before looking, so a submit that lands while we look still wakes us.
            self._wake.clear()
            try:
                delivery = await self.queue.claim(QUEUE_KIND, self.consumer, self.lease)
            except Exception as exc:  # the queue's store is away; try again shortly
                if not self._queue_down:
                    self._queue_down = True
                    log_event("job_queue_unavailable", logging.WARNING, error=type(exc).__name__)
                await self._idle(BACKOFF)
                continue
            if self._queue_down:
                self._queue_down = False
                log_event("job_queue_recovered")
            if delivery is None:
                await self._idle(self.poll_interval)
                continue
            try:
                await self._handle(delivery)
            except Exception as exc:
                # The record or the queue failed mid-way; the lease makes it come back.
                log_event(
                    "job_worker_error",
                    logging.ERROR,
                    job_id=delivery.entry_id,
                    error=type(exc).__name__,
                )
                await self._idle(BACKOFF)

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _handle(self, delivery: Delivery) -> None:
        job = await self.store.get_job(delivery.entry_id)
        if job is None or job.final:
            await self.queue.ack(delivery)  # cancelled, finished by another worker, or expired
            return
        runner = self._runners.get(job.kind)
        if runner is None:  # made by a newer version of the proxy; leave it to one that knows
            await self.queue.release(delivery)
            await self._idle(BACKOFF)
            return
        if job.status == "in_progress":
            # The worker before us died with this job sent: its call may have been billed,
            # and we are about to make the image again.
            resumed = replace(job, started_at=self.clock.now(), attempts=job.attempts + 1)
            if not await self.store.swap_job(resumed, IN_PROGRESS, OPEN_JOB_TTL):
                await self.queue.ack(delivery)  # finished by another worker meanwhile
                return
            job = resumed
            self._count("resumed")
            model = str(job.meta.get("model", "unknown"))
            self.metrics.child(self.metrics.duplicate_spend, "unknown", model).inc()
            log_event("job_resumed", logging.WARNING, job_id=job.id, attempt=job.attempts)
        start = JobStart(self.store, self.clock, job, OPEN_JOB_TTL)
        run = asyncio.create_task(self._run(runner, start))
        self._running[job.id] = run
        keeper = asyncio.create_task(self._keep_lease(delivery, run))
        try:
            try:
                finished = await asyncio.shield(run)
            except asyncio.CancelledError:
                if not run.cancelled():  # this worker is stopping: so is the job
                    run.cancel()
                    with contextlib.suppress(BaseException):
                        await run
                    raise
                finished = None  # cancelled by its owner before anything was sent
            if start.unsure and not start.sent:  # the store failed as it was to be sent
                await self.queue.release(delivery)  # another try, by whoever claims it
                await self._idle(BACKOFF)
                return
            # Still holding the lease: an image that is made (and paid) must not be made
            # again because the store hiccuped once while it was being recorded. A job
            # another worker started first (`refused`) is that worker's to record.
            if finished is not None and not start.refused and await self._record(finished):
                self._count(finished.status)
        finally:
            keeper.cancel()
            self._running.pop(job.id, None)
        await self.queue.ack(delivery)

    async def _record(self, finished: JobRecord) -> bool:
        for attempt in range(RECORD_ATTEMPTS):
            try:
                # `queued` too: a cache hit or a replay finishes without sending anything.
                return await self.store.swap_job(finished, RUNNABLE, self.result_ttl)
            except Exception as exc:
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                error = type(exc).__name__
                log_event("job_record_retry", logging.WARNING, job_id=finished.id, error=error)
                await asyncio.sleep(BACKOFF)
        return False

    async def _run(self, runner: JobRunner, start: JobStart) -> JobRecord:
        try:
            result = await runner(start.job, start)
        except ApiError as error:
            job = start.job
            return self._finished(job, "failed", error=error.body()["error"])
        except Exception as exc:
            job = start.job
            log_event("job_failed", logging.ERROR, job_id=job.id, error=type(exc).__name__)
            internal = ApiError(500, "internal error", code="internal_error")
            return self._finished(job, "failed", error=internal.body()["error"])
        return self._finished(start.job, "completed", result=result)

    def _finished(self, job: JobRecord, status: str, **fields) -> JobRecord:
        # The request (with any uploaded images) is not needed once nobody will run it again.
        return replace(job, status=status, completed_at=self.clock.now(), request=b"", **fields)

    async def _keep_lease(self, delivery: Delivery, run: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(Exception):  # a missed renewal is retried next time
                await self.queue.renew(delivery, self.lease)
                # Cancelled on another replica while this one waits for a slot: stop waiting
                # (nothing can be sent anyway: `JobStart` would refuse).
                job = await self.store.get_job(delivery.entry_id)
                if job is not None and job.status == "cancelled":
                    run.cancel()

    def _count(self, event: str) -> None:
        self.metrics.child(self.metrics.jobs, event).inc()
