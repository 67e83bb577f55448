"""The batch runner: every replica runs one, and together they drain the batches' lines
through the account pool, as budgets allow, over as many days as it takes.

- A line is claimed from the store (one runner at a time; a dead runner's lines are taken
  over after `BATCH_LINE_LEASE_SECONDS`), run through `run_line` (the work layer, with the
  line as Idempotency-Key), and its outcome recorded once with the batch's counters. An
  image is made once per line; only a call in flight when its runner died can be made again
  (the pool counts it as maybe-billed).
- Live requests keep priority: a runner holds at most `BATCH_SLOT_SHARE` of an account's
  slots and leaves `BATCH_BUDGET_RESERVE` neurons of its day (the pool enforces the reserve
  when it reserves neurons).
- When no account can cover the next line, nothing is claimed and nothing is called: the
  runner looks at the store again every `BATCH_POLL_SECONDS` (blocks end and budgets reset
  at 00:00 UTC by the store's clock), so it goes on as soon as the first account returns.
  A line handed back unrun does not wake the runner (that would spin on a refusal); and
  when the batch's owner key is past its daily quota, the owner's batches rest until the
  quota's reset instead of claiming a line per look.
- A line too dear for every account's room today is handed back and the next lines are
  tried in its place (the store hands out lines not tried yet first), so smaller lines go
  ahead of it; at most `SKIP_LINES` a look per batch, never a scan of the batch.
- Batches take turns line by line (round robin). A cancelled or expired batch's unclaimed
  lines are closed at once without a call; lines already running finish.
- Whoever records a batch's last line assembles its output and error files, once: a lease
  in the batch document (`finalizer_until`) makes a second assembler wait, and takes over
  from one that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import replace
from typing import Any

from flux_proxy.api.caller import Caller
from flux_proxy.api.generate import finish_all
from flux_proxy.api.parse import ImageRequest
from flux_proxy.api.render import images_body
from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError
from flux_proxy.image_store import ImageStore
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.settings import Settings
from flux_proxy.store.base import LineClaim, StoreUnavailable
from flux_proxy.work.batch_estimates import AccountRoom, account_rooms, batch_slots, budget_reserve
from flux_proxy.work.batch_line import run_line
from flux_proxy.work.batch_line_store import custom_id_of, line_of, lines_blob_key
from flux_proxy.work.batches import (
    ACTIVE,
    ACTIVE_KIND,
    BATCH_KIND,
    ENDPOINTS,
    finished_lines,
    line_request,
    output_file_ids,
    output_line,
    request_counts,
)
from flux_proxy.work.files import FileStore

# Pool answers that mean "not now" (no account could take it): the line goes back unrun.
RETRY_LATER = (409, 429, 502, 503)  # 409: the line's earlier work is still in flight
FINALIZE_LEASE = 120.0
# Lines too dear for today a runner hands back in one look before it leaves a batch be: enough
# to get past a few big lines, never a scan of a 50,000-line batch every poll.
SKIP_LINES = 16


class BatchRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        store: Any,
        pool: Any,
        files: FileStore,
        images: ImageStore,
        work: Any,
        metrics: Metrics,
    ) -> None:
        self.settings, self.clock, self.store, self.pool = settings, clock, store, pool
        self.files, self.images, self.work, self.metrics = files, images, work, metrics
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: dict[int, int] = {}  # account number -> batch lines in flight here
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._last_started: str | None = None  # the batch that got the latest line
        self._store_down = False
        self._last_sweep = float("-inf")
        self._owner_resting: dict[str, float] = {}  # owner key name -> clock time it may go on

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.settings.batch_runner and self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None
        await self.work.close()

    def wake(self) -> None:
        """Look at the batches now (a batch was created or cancelled, a line finished)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
                self._store_down = False
            except StoreUnavailable:
                if not self._store_down:
                    log_event("batch_runner_paused", logging.WARNING, reason="state store away")
                self._store_down = True
            except Exception as exc:
                log_event("batch_runner_error", logging.ERROR, error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.batch_poll_seconds):
                    await self._wake.wait()
            self._wake.clear()

    # --- one look at the batches --------------------------------------------------------------

    async def tick(self) -> None:
        now = self.clock.now()
        docs = []
        for entry in await self.store.list_docs(ACTIVE_KIND):
            doc = await self.store.get_doc(BATCH_KIND, entry["id"])
            if doc is not None and doc["status"] in ACTIVE:
                docs.append(doc)
            else:  # finished (its finalizer died before tidying up) or gone
                await self.store.delete_doc(ACTIVE_KIND, entry["id"])
        docs.sort(key=lambda d: (d["created_at"], d["id"]))
        runnable = []
        for doc in docs:
            if doc["status"] == "cancelling":
                await self._close_unclaimed(doc, "cancelled")
            elif doc["status"] == "in_progress" and now >= doc["expires_at"]:
                await self._close_unclaimed(doc, "expired")
            elif doc["status"] == "in_progress" and not self._resting(doc["owner"], now):
                runnable.append(doc)
            counts = await self.store.line_counts(doc["id"])
            if finished_lines(counts) >= doc["request_counts"]["total"]:
                await self.finalize(doc["id"])  # normally done by the last line's runner
        if runnable:
            await self._dispatch(runnable)
        if now - self._last_sweep > 3600:
            self._last_sweep = now
            await self.files.sweep()

    def _resting(self, owner: str, now: float) -> bool:
        until = self._owner_resting.get(owner)
        if until is not None and now >= until:
            del self._owner_resting[owner]
            until = None
        return until is not None

    def _rest_owner(self, owner: str, error: ApiError) -> None:
        """The owner's key is past its quota: leave its batches until the reset it names."""
        try:
            wait = float(error.headers.get("retry-after", ""))
        except ValueError:
            wait = self.settings.batch_poll_seconds
        until = self.clock.now() + max(wait, self.settings.batch_poll_seconds)
        if self._owner_resting.get(owner, 0.0) < until:
            self._owner_resting[owner] = until
            seconds = round(until - self.clock.now())
            log_event("batch_owner_resting", key_name=owner, seconds=seconds)

    async def _close_unclaimed(self, doc: dict, outcome: str) -> None:
        """Cancelled or expired: every line nobody is running ends now, without a call."""
        code, message = (
            ("batch_cancelled", "the batch was cancelled before this line ran")
            if outcome == "cancelled"
            else ("batch_expired", "the batch's completion window ended before this line ran")
        )
        lease = self.settings.batch_line_lease_seconds
        while (claim := await self.store.claim_line(doc["id"], self.worker, lease)) is not None:
            result = _error_line(custom_id_of(claim.payload), code, message)
            await self._record(doc, claim, outcome, result, 0.0)

    async def _dispatch(self, docs: list[dict]) -> None:
        """Start lines while some account has room, one batch after another in turn."""
        rooms = {room.number: room for room in await self._rooms()}
        if not rooms:
            return
        # The turn passes to the batch after the one that got the latest line: counting
        # looks at the store instead (most find no room) made the order depend on timing.
        ids = [doc["id"] for doc in docs]
        start = ids.index(self._last_started) + 1 if self._last_started in ids else 0
        turn = docs[start:] + docs[:start]
        while turn and rooms:
            for doc in list(turn):
                if await self._start_one(doc, rooms):
                    self._last_started = doc["id"]
                else:
                    turn.remove(doc)

    async def _rooms(self) -> list[AccountRoom]:
        """Accounts that could take a batch line now on this replica."""
        limit = batch_slots(self.settings)
        rooms = await account_rooms(self.pool, self.store, self.settings, self.clock)
        slots = self.pool.slots
        return [
            room
            for room in rooms
            if room.usable_now
            and (room.today is None or room.today > 0)
            and self._running.get(room.number, 0) < limit
            and slots.has_room(room.number)
        ]

    async def _start_one(self, doc: dict, rooms: dict[int, AccountRoom]) -> bool:
        """Claim and start one line of `doc`; False when it has none to run now.

        A line too dear for every account's room today is handed back, and the store hands
        out the lines not tried yet before it (`claim_line`): the next few are tried in its
        place (at most SKIP_LINES a look), so one dear line does not hold up cheaper ones."""
        cheapest = doc.get("cheapest_line_neurons", doc.get("line_neurons", 1.0))
        if not _fits_any(cheapest, rooms):
            return False  # not even the cheapest line fits: do not touch the queue
        skipped: set[int] = set()
        while len(skipped) < SKIP_LINES:
            claim = await self.store.claim_line(
                doc["id"], self.worker, self.settings.batch_line_lease_seconds
            )
            if claim is None:
                return False
            if claim.index in skipped:  # round the batch's open lines once: none fits
                await self.store.release_line(claim)
                return False
            started = await self._start_claimed(doc, claim, rooms)
            if started:
                return True
            skipped.add(claim.index)
        return False

    async def _start_claimed(
        self, doc: dict, claim: LineClaim, rooms: dict[int, AccountRoom]
    ) -> bool:
        """Start the claimed line on the account with most room; False (and the line handed
        back) when no account can cover it today."""
        owner = Caller(doc["owner"], "user")
        try:
            line = await line_of(self.files.blobs, doc["id"], claim.payload)
            request = await line_request(
                line.get("body"),
                self.settings,
                edit=ENDPOINTS[doc["endpoint"]],
                files=self.files,
                owner=owner,
            )
        except ApiError as error:  # e.g. a referenced file was deleted since validation
            failure = _error_line(custom_id_of(claim.payload), error.code, error.message)
            await self._record(doc, claim, "failed", failure, 0)
            return True
        cost = max(request.job.estimated_neurons(), 1.0) * request.n
        account = _pick(cost, rooms)
        if account is None:
            await self.store.release_line(claim)
            return False
        room = rooms[account]
        self._running[account] = self._running.get(account, 0) + 1
        if room.today is not None:
            rooms[account] = AccountRoom(account, room.today - cost, room.per_day, True)
        if self._running[account] >= batch_slots(self.settings) or (
            rooms[account].today is not None and rooms[account].today <= 0
        ):
            del rooms[account]
        task = asyncio.create_task(self._run(doc, claim, line, request, account))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # --- one line ---------------------------------------------------------------------------

    async def _run(
        self, doc: dict, claim: LineClaim, line: dict, request: ImageRequest, account: int
    ) -> None:
        request_id = f"batch_req_{secrets.token_hex(12)}"
        made_progress = True
        try:
            try:
                result = await run_line(
                    self.work,
                    request,
                    caller=doc["owner"],
                    request_id=request_id,
                    line_key=f"{doc['id']}:{claim.index}",
                    accounts=[account],
                    keep_back=budget_reserve(self.settings),
                )
            except ApiError as error:
                if error.status in RETRY_LATER:
                    made_progress = False
                    if error.code == "key_quota_exceeded":
                        self._rest_owner(doc["owner"], error)
                    await self.store.release_line(claim)  # it was not made; try again later
                    self.metrics.child(self.metrics.batch_lines, "released").inc()
                    return
                result = _error_line(line.get("custom_id"), error.code, error.message)
                await self._record(doc, claim, "failed", result, 0.0, request_id)
                return
            if request.response_format is None:
                # URLs only by default: 500 images must not make a gigabyte of JSONL.
                request = replace(request, response_format="url")
            outcome = await finish_all(result, request)
            body = await images_body(
                outcome,
                request,
                created=result.created,
                result_id=result.id,
                image_store=self.images,
                base_url=doc["base_url"],
            )
            result = {
                "id": request_id,
                "custom_id": line.get("custom_id"),
                "response": {"status_code": 200, "request_id": request_id, "body": body},
                "error": None,
            }
            await self._record(doc, claim, "completed", result, body["usage"]["neurons"])
        except asyncio.CancelledError:
            # Shutting down: hand the line back so another runner need not wait for the lease.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release_line(claim))
            raise
        except StoreUnavailable:
            pass  # the lease lapses and another runner takes the line over
        except Exception as exc:
            log_event("batch_line_error", logging.ERROR, batch=doc["id"], error=type(exc).__name__)
            made_progress = False
            with contextlib.suppress(Exception):
                await self.store.release_line(claim)
        finally:
            self._running[account] = self._running.get(account, 1) - 1
            if made_progress:  # a slot is free for the next line; a refusal waits for the poll
                self.wake()

    async def _record(
        self,
        doc: dict,
        claim: LineClaim,
        outcome: str,
        result: dict,
        neurons: float,
        request_id: str | None = None,
    ) -> None:
        if request_id is not None and result.get("id") is None:
            result["id"] = request_id
        counts = await self._finish_line(claim, outcome, output_line(result), neurons)
        if counts is not None:
            self.metrics.child(self.metrics.batch_lines, outcome).inc()
        log_event(
            "batch_line",
            batch=doc["id"],
            line=claim.index,
            outcome=outcome,
            recorded=counts is not None,
        )
        if counts is not None and finished_lines(counts) >= doc["request_counts"]["total"]:
            await self.finalize(doc["id"])

    async def _finish_line(
        self, claim: LineClaim, outcome: str, line: str, neurons: float
    ) -> dict | None:
        """Record the outcome, waiting while the shared state is away: the line's image is
        made and paid, and a line left unrecorded is made again once its lease lapses.
        Recording is once only, so a try whose answer was lost is safe to repeat."""
        while True:
            try:
                return await self.store.finish_line(claim, outcome, line, neurons)
            except StoreUnavailable:
                await asyncio.sleep(self.settings.batch_poll_seconds)

    # --- the end of a batch -----------------------------------------------------------------

    async def finalize(self, batch_id: str) -> None:
        """Write the output and error files and close the batch, once across replicas."""
        now = self.clock.now()
        lease_end = now + FINALIZE_LEASE
        doc = await self.store.get_doc(BATCH_KIND, batch_id)
        if doc is None or doc["status"] not in ACTIVE:
            return
        holder = doc.get("finalizer_until")
        if holder is not None and holder > now:
            return  # someone is assembling it right now
        changes: dict = {"finalizer_until": lease_end}
        if doc["status"] == "in_progress":
            changes |= {"status": "finalizing", "finalizing_at": int(now)}
        doc = await self.store.patch_doc(
            BATCH_KIND, batch_id, changes, when={"finalizer_until": holder, "status": doc["status"]}
        )
        if doc is None:
            return  # another replica won the race
        results = await self.store.line_results(batch_id)
        counts = await self.store.line_counts(batch_id)
        output = [r for _, outcome, r in results if outcome == "completed"]
        errors = [r for _, outcome, r in results if outcome != "completed"]
        out_id, err_id = output_file_ids(batch_id)
        ttl = doc.get("output_ttl") or self.settings.batch_output_ttl  # older docs: none
        final: dict = {
            "request_counts": request_counts(doc["request_counts"]["total"], counts),
            "neurons_used": round(counts["neurons"], 2),
            "finalizer_until": None,
            "estimated_completion_at": None,
        }
        if output:
            await self.files.put_output(
                out_id, doc["owner"], f"{batch_id}_output.jsonl", _jsonl(output), ttl
            )
            final["output_file_id"] = out_id
        if errors:
            await self.files.put_output(
                err_id, doc["owner"], f"{batch_id}_error.jsonl", _jsonl(errors), ttl
            )
            final["error_file_id"] = err_id
        at = int(self.clock.now())
        if doc["status"] == "cancelling":
            final |= {"status": "cancelled", "cancelled_at": at}
        elif counts["expired"]:
            final |= {"status": "expired", "expired_at": at}
        else:
            final |= {"status": "completed", "completed_at": at}
        if await self.store.patch_doc(
            BATCH_KIND, batch_id, final, when={"finalizer_until": lease_end}
        ):
            await self.store.drop_lines(batch_id)
            await self.files.blobs.delete(lines_blob_key(batch_id))
            await self.store.delete_doc(ACTIVE_KIND, batch_id)
            log_event("batch_finished", batch=batch_id, status=final["status"], **counts)


def _fits_any(cost: float, rooms: dict[int, AccountRoom]) -> bool:
    return any(room.today is None or room.today >= cost for room in rooms.values())


def _pick(cost: float, rooms: dict[int, AccountRoom]) -> int | None:
    """The account with the most room that can cover `cost` today."""
    fitting = [room for room in rooms.values() if room.today is None or room.today >= cost]
    if not fitting:
        return None
    best = max(fitting, key=lambda r: (float("inf") if r.today is None else r.today, -r.number))
    return best.number


def _error_line(custom_id: Any, code: str | None, message: str) -> dict:
    return {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code or "error", "message": message},
    }


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()
