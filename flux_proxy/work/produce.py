"""`ImageWork.produce`: the one way every entry point (HTTP, async jobs, batch lines, MCP) gets
the images of an `ImageRequest`. Rendering them (JSON, URL, SSE) stays with the entry point.

What it guarantees (issue 9):
- a call that was sent runs to its end even when the caller leaves (`produce` is cancelled):
  its neurons are settled, and the finished result is kept (`RESULT_TTL_SECONDS`) for a retry
  to collect. Images still waiting (for a slot, for a flight) are cancelled at once, freeing
  everything, as before;
- a repeat (same `Idempotency-Key`, or an SDK retry of the same request) waits for the work
  still in flight or gets the kept result; only failed work is tried again (`repeats.py`);
- seeded images come from the content-addressed cache, one call per identical image however
  many ask at once (`cache.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from flux_proxy.api.parse import ImageRequest
from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError
from flux_proxy.job import ImageJob
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.pool import CallProgress
from flux_proxy.settings import Settings
from flux_proxy.store.base import StateStore
from flux_proxy.work.cache import CachePolicy, SeededCache
from flux_proxy.work.first_look import UNKNOWN, FirstLook, OnFirstLook
from flux_proxy.work.repeats import (
    Repeats,
    idempotency_store_key,
    key_reused,
    retry_store_key,
)
from flux_proxy.work.results import MadeImage, WorkFailed, WorkResult, failure_of, not_made
from flux_proxy.work.work_request import BeforeSend, WorkRequest

__all__ = ["CachePolicy", "ImageWork", "MadeImage", "WorkResult", "failure_of"]

OnImage = Callable[[MadeImage], None]


class ImageWork:
    def __init__(
        self,
        settings: Settings,
        pool: Any,
        store: StateStore,
        clock: Clock,
        metrics: Metrics,
        quota: Any = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        # teams: per-key quotas (flux_proxy/keys/quota.py), held for new work only.
        self.quota = quota
        self.clock = clock
        self.metrics = metrics
        # Who holds a marker: this process, for as long as it runs.
        self.holder = f"work-{secrets.token_hex(8)}"
        self.repeats = Repeats(store, result_ttl=settings.result_ttl_seconds, holder=self.holder)
        self.cache = SeededCache(
            store,
            ttl=settings.cache_ttl_seconds,
            max_bytes=settings.cache_max_bytes,
            holder=self.holder,
        )
        self._background: set[asyncio.Task] = set()

    @property
    def _work_limit(self) -> float:
        """How long a piece of work can take: the longest a repeat waits, a marker lives."""
        return self.settings.request_deadline + self.settings.upstream_read_timeout

    # --- the entry point -----------------------------------------------------------------

    async def produce(
        self,
        request: ImageRequest,
        *,
        caller: str,
        request_id: str,
        idempotency_key: str | None = None,
        sdk_retry: bool = False,
        cache: CachePolicy = CachePolicy.USE,
        on_image: OnImage | None = None,
        on_first_look: OnFirstLook | None = None,
        before_send: BeforeSend | None = None,
    ) -> WorkResult:
        """The images of `request` for `caller` (`Caller.name`).

        Raises `WorkFailed` (an ApiError: the first image's failure, with every image's in
        `errors`) when no image was made; with some made, the failures are in
        `WorkResult.errors`. `on_image` is called as each image is ready (for
        streaming). `on_first_look` is called once, before any image is made, with what is
        known of the answer by then (`first_look.py`: for a stream's headers); a refusal before
        that point (422, the key's quota) is raised before it is called. Cancelling this (the
        caller left) cancels what has not been sent and lets sent calls finish, keeping their
        result for a retry. `before_send` is awaited before each upstream call (`WorkRequest`).
        """
        work = WorkRequest(request, caller, request_id, cache, on_first_look, before_send)
        if idempotency_key is not None:
            return await self._by_idempotency_key(work, idempotency_key, on_image)
        if sdk_retry:
            key = retry_store_key(caller, work.fingerprint.request)
            await self.repeats.wait(key, self._work_limit, on_wait=lambda: work.look.tell(UNKNOWN))
            kept = await self.repeats.collect(key, work.fingerprint.request)
            if kept is not None:
                return self._replayed(work, kept, on_image)
        return await self._make(work, on_image, claimed=None)

    async def finish_sent(self, seconds: float) -> None:
        """Wait up to `seconds` for the work whose caller left (sent calls running to
        their end, their results being kept): a process stopping without a server's grace
        period (`flux-proxy mcp` once its host closed stdin) gives them this time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._background and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._background), timeout=left)

    async def close(self) -> None:
        """Server shutdown: work still running after the grace period is given up."""
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task

    # --- repeats -------------------------------------------------------------------------

    async def _by_idempotency_key(
        self, work: WorkRequest, idempotency_key: str, on_image: OnImage | None
    ) -> WorkResult:
        key = idempotency_store_key(work.caller, idempotency_key)
        fingerprint = work.fingerprint.request
        while True:
            kept = await self.repeats.collect(key, fingerprint)
            if kept is not None:
                return self._replayed(work, kept, on_image)
            holder = await self._claim_or_release(key, fingerprint)
            if holder is None:
                return await self._make(work, on_image, claimed=key)
            if holder != fingerprint:
                raise key_reused()
            work.look.tell(UNKNOWN)  # a replay, or new work if that one fails
            await self.repeats.wait(key, self._work_limit)

    async def _claim_or_release(self, key: str, fingerprint: str) -> str | None:
        """`repeats.claim`, except that a caller leaving while the claim is on its way to the
        store does not leave the key held (its repeats would wait for nothing)."""
        claiming = asyncio.ensure_future(self.repeats.claim(key, fingerprint, self._work_limit))
        try:
            return await asyncio.shield(claiming)
        except asyncio.CancelledError:

            def release_if_claimed(task: asyncio.Task) -> None:
                if not task.cancelled() and task.exception() is None and task.result() is None:
                    self._spawn(self.repeats.release(key, fingerprint))

            claiming.add_done_callback(release_if_claimed)
            raise

    def _replayed(
        self, work: WorkRequest, kept: WorkResult, on_image: OnImage | None
    ) -> WorkResult:
        work.look.tell(FirstLook(kept.cache, True, kept.created))
        self.metrics.results_collected.inc()
        if on_image is not None:
            for made in kept.images:
                on_image(made)
        if not kept.images:
            raise WorkFailed(kept.errors)
        return kept

    # --- making ----------------------------------------------------------------------------

    async def _make(
        self, work: WorkRequest, on_image: OnImage | None, *, claimed: str | None
    ) -> WorkResult:
        # The key's model list and daily quota, held before any upstream call (403 / 429).
        try:
            hold = await self.quota.reserve(work.caller, work.request) if self.quota else None
        except BaseException:
            if claimed is not None:  # refused: the Idempotency-Key is free for a later try
                await asyncio.shield(self.repeats.release(claimed, work.fingerprint.request))
            raise
        if not self._cacheable(work):
            work.look.tell(FirstLook("bypass", False))
        elif work.cache is CachePolicy.REFRESH:
            work.look.tell(FirstLook("miss", False))
        jobs = work.request.jobs()
        progress = [CallProgress(before_send=work.before_send) for _ in jobs]
        tasks = [
            asyncio.create_task(self._image(work, index, job, progress[index], on_image))
            for index, job in enumerate(jobs)
        ]
        for task in tasks:  # outcomes are read by _assemble; this only quiets the loop's log
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        created = int(self.clock.now())
        result_id = f"img_{secrets.token_hex(16)}"
        try:
            await asyncio.wait(tasks)
        except asyncio.CancelledError:
            self._abandon(work, tasks, progress, claimed, result_id, created, hold)
            raise
        result = self._assemble(work, tasks, result_id, created)
        if hold is not None:
            await asyncio.shield(hold.settle(result.images))
        if claimed is not None:
            # Shielded: a caller leaving now must not lose what is already made.
            await asyncio.shield(self._keep_and_release(work, result, [claimed], claimed))
        if not result.images:
            raise WorkFailed(result.errors)
        return result

    async def _image(
        self,
        work: WorkRequest,
        index: int,
        job: ImageJob,
        progress: CallProgress,
        on_image: OnImage | None,
    ) -> MadeImage:
        request = work.request
        cacheable = (
            self.cache.enabled
            and request.requested_seed is not None
            and job.seed is not None
            and work.cache is not CachePolicy.BYPASS
        )

        async def make():
            work.look.image(index, "miss")  # no cached image to give: it is made here
            return await self.pool.generate(job, request_id=work.request_id, progress=progress)

        try:
            if not cacheable:
                made = MadeImage(index, await make(), job.seed)
            else:
                made = await self._seeded(work, index, job, make)
        finally:
            work.look.image(index, None)  # failed before its lookup said anything
        if on_image is not None:
            on_image(made)
        return made

    async def _seeded(self, work: WorkRequest, index: int, job: ImageJob, make) -> MadeImage:
        assert job.seed is not None
        key = work.fingerprint.image(job.seed)
        model = job.model.short_name
        metrics = self.metrics
        if work.cache is CachePolicy.USE:
            found = await self.cache.get(key)
            if found is None:
                found, shared = await self.cache.single_flight(
                    key,
                    make,
                    wait_limit=self._work_limit,
                    on_wait=lambda: work.look.image(index, None),
                )
            else:
                work.look.image(index, "hit")
                shared = True
        else:  # REFRESH: make anew, then replace the entry
            found, shared = await make(), False
            try:
                await self.cache.put(key, found)
            except Exception as exc:  # the image is paid for and goes out; only caching failed
                log_event("cache_put_failed", logging.WARNING, error=type(exc).__name__)
        if shared:
            metrics.child(metrics.cache_lookups, model, "hit").inc()
            metrics.child(metrics.cache_neurons_saved, model).inc(found.neurons or 0.0)
        else:
            metrics.child(metrics.cache_lookups, model, "miss").inc()
        return MadeImage(index, found, job.seed, cached=shared)

    def _assemble(
        self, work: WorkRequest, tasks: list[asyncio.Task], result_id: str, created: int
    ) -> WorkResult:
        images: list[MadeImage] = []
        errors: list[tuple[int, ApiError]] = []
        for index, task in enumerate(tasks):
            if task.cancelled():  # only after a hang-up: its call was not sent yet
                errors.append((index, not_made(index)))
                continue
            error = task.exception()
            if error is not None:
                if not isinstance(error, Exception):
                    raise error
                errors.append((index, failure_of(error, request_id=work.request_id, index=index)))
            else:
                images.append(task.result())
        cache = "bypass"
        if any(m.seed is not None for m in images) and self._cacheable(work):
            cache = "hit" if images and all(m.cached for m in images) else "miss"
        return WorkResult(result_id, created, images, errors, cache=cache)

    def _cacheable(self, work: WorkRequest) -> bool:
        return (
            self.cache.enabled
            and work.request.requested_seed is not None
            and work.cache is not CachePolicy.BYPASS
        )

    # --- the caller left -----------------------------------------------------------------

    def _abandon(
        self,
        work: WorkRequest,
        tasks: list[asyncio.Task],
        progress: list[CallProgress],
        claimed: str | None,
        result_id: str,
        created: int,
        hold: Any = None,
    ) -> None:
        """Cancel the images no call was sent for; let the sent ones finish, and keep their
        result under the caller's retry key (and the Idempotency-Key, if any)."""
        running = []
        for task, state in zip(tasks, progress, strict=True):
            if task.done():
                continue
            if state.calling:
                state.abandoned = True  # no failover to another account for nobody
                running.append(task)
                self._track(task)  # shutdown gives it up after the grace period
            else:
                task.cancel()
        made_before = any(t.done() and not t.cancelled() and not t.exception() for t in tasks)
        if not running and not made_before:
            if claimed is not None:
                self._spawn(self.repeats.release(claimed, work.fingerprint.request))
            if hold is not None:
                self._spawn(hold.finish())
            return
        retry_key = retry_store_key(work.caller, work.fingerprint.request)
        self.repeats.hold_locally(retry_key)  # a retry here waits from this very moment
        self._spawn(
            self._finish_abandoned(
                work, tasks, running, claimed, retry_key, result_id, created, hold
            )
        )

    async def _finish_abandoned(
        self,
        work: WorkRequest,
        tasks: list[asyncio.Task],
        running: list[asyncio.Task],
        claimed: str | None,
        retry_key: str,
        result_id: str,
        created: int,
        hold: Any = None,
    ) -> None:
        fingerprint = work.fingerprint.request
        keys = [retry_key] + ([claimed] if claimed else [])
        try:
            await self.repeats.claim(retry_key, fingerprint, self._work_limit)
            await asyncio.wait(tasks)  # the running ones, and the cancelled ones ending
            finished = sum(1 for t in running if not t.cancelled() and not t.exception())
            if finished:
                self.metrics.child(
                    self.metrics.finished_after_hangup, work.request.job.model.short_name
                ).inc(finished)
            result = self._assemble(work, tasks, result_id, created)
            if hold is not None:
                await hold.settle(result.images)
            if result.images:
                await self.repeats.keep(keys, fingerprint, result)
                self.metrics.results_kept.inc()
                log_event(
                    "result_kept",
                    request_id=work.request_id,
                    images=len(result.images),
                    ttl=self.settings.result_ttl_seconds,
                )
        finally:
            if hold is not None:
                with contextlib.suppress(Exception):
                    await hold.finish()  # nothing to do if settled above
            for key in keys:
                with contextlib.suppress(Exception):
                    await self.repeats.release(key, fingerprint)

    async def _keep_and_release(
        self, work: WorkRequest, result: WorkResult, keys: list[str], claimed: str
    ) -> None:
        fingerprint = work.fingerprint.request
        try:
            if result.images:
                await self.repeats.keep(keys, fingerprint, result)
        finally:
            await self.repeats.release(claimed, fingerprint)

    def _spawn(self, coroutine) -> None:
        self._track(asyncio.create_task(coroutine))

    def _track(self, task: asyncio.Task) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
