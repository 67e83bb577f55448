"""Creating, reading, listing and cancelling batches: what the Batch API's handlers call.

Reads merge the live counters (`line_counts`) and a fresh completion estimate into the stored
document, so `batches.retrieve` shows progress as it happens on any replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux_proxy.api.caller import Caller
from flux_proxy.clock import Clock
from flux_proxy.errors import NO_RETRY, ApiError, invalid
from flux_proxy.image_store import ImageStore
from flux_proxy.settings import Settings
from flux_proxy.work.batch_estimates import (
    account_rooms,
    beyond_any_day,
    estimate_completion,
    key_lines,
)
from flux_proxy.work.batch_line import LinePool
from flux_proxy.work.batch_line_store import queued_payloads
from flux_proxy.work.batch_runner import BatchRunner
from flux_proxy.work.batches import (
    ACTIVE,
    ACTIVE_KIND,
    BATCH_KIND,
    ENDPOINTS,
    check_input,
    completion_window,
    finished_lines,
    line_owner,
    new_batch_id,
    public_batch,
    unsupported_endpoint,
)
from flux_proxy.work.file_blobs import DiskBlobs
from flux_proxy.work.files import FileStore, expiry_seconds, sort_key
from flux_proxy.work.produce import ImageWork


def not_found(batch_id: str) -> ApiError:
    return ApiError(
        404, f"No such Batch object: {batch_id[:80]}", param="batch_id", code="not_found"
    )


class BatchService:
    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        store: Any,
        pool: Any,
        files: FileStore,
        runner: BatchRunner,
        quota: Any = None,
    ) -> None:
        self.settings, self.clock, self.store, self.pool = settings, clock, store, pool
        self.files, self.runner, self.quota = files, runner, quota

    async def create(self, caller: Caller, body: dict, base_url: str) -> dict:
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise unsupported_endpoint(endpoint)
        window, window_label = completion_window(body.get("completion_window", "24h"))
        metadata = _metadata(body.get("metadata"))
        output_ttl = self._output_ttl(body.get("output_expires_after"))
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or not file_id:
            raise invalid("input_file_id is required", param="input_file_id")
        data, file_doc = await self.files.content(file_id, caller)
        if file_doc["purpose"] != "batch":
            raise invalid(
                f"file {file_id[:80]} has purpose {file_doc['purpose']!r}, not 'batch'",
                param="input_file_id",
            )
        checked = await check_input(data, endpoint, self.settings, self.files, line_owner(caller))
        total = len(checked.payloads) + len(checked.errors)
        if not checked.errors:
            rooms = await account_rooms(
                self.pool, self.store, self.settings, self.clock, held=False
            )
            checked.errors = beyond_any_day(checked, rooms)
        now = self.clock.now()
        batch_id = new_batch_id()
        doc: dict = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "model": None,
            "input_file_id": file_id,
            "completion_window": window_label,
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now),
            "in_progress_at": None,
            "expires_at": int(now + window),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": total, "completed": 0, "failed": 0},
            "errors": None,
            "metadata": metadata,
            "usage": None,
            # Extensions (documented in the README).
            "estimated_neurons": round(sum(checked.neurons), 2),
            "estimated_completion_at": None,
            "neurons_used": 0.0,
            # The proxy's own.
            "owner": caller.name,
            "base_url": base_url,
            "line_neurons": sum(checked.neurons) / len(checked.neurons) if checked.neurons else 0,
            "cheapest_line_neurons": min(checked.neurons, default=0),
            "line_images": sum(checked.images) / len(checked.images) if checked.images else 1,
            "typical_seconds": checked.typical_seconds,
            "sort_key": sort_key(now),
            "output_ttl": output_ttl,
        }
        if checked.errors:
            # One bad line fails the whole batch before anything is queued: nothing is spent,
            # and (as OpenAI counts a batch that failed validation) no request is counted.
            doc |= {
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "status": "failed",
                "failed_at": int(now),
                "errors": {"object": "list", "data": checked.errors},
            }
            await self.store.put_doc(BATCH_KIND, batch_id, doc)
            return public_batch(doc)
        doc["in_progress_at"] = int(now)
        # OpenAI's `model`: the one model every line runs on (the default for lines naming
        # none), as the lines' answers name it; None for a batch of several models.
        doc["model"] = next(iter(checked.models)) if len(checked.models) == 1 else None
        # Lines first, then the document: a runner never sees a batch without its lines.
        ttl = window + self.settings.batch_output_ttl
        # Big lines (data: URLs) go to the batch's lines blob on disk; the store queues
        # references to them (`batch_line_store.py`), so Redis never holds the images.
        queued = await queued_payloads(self.files.blobs, batch_id, checked.payloads, ttl)
        await self.store.add_lines(batch_id, queued, ttl)
        await self.store.put_doc(BATCH_KIND, batch_id, doc)
        await self.store.put_doc(ACTIVE_KIND, batch_id, {"id": batch_id})
        self.runner.wake()
        return await self._render(doc)

    def _output_ttl(self, policy: Any) -> float:
        """How long the output and error files are kept once written: BATCH_OUTPUT_TTL, or
        less when `output_expires_after` asks."""
        longest = float(self.settings.batch_output_ttl)
        if policy is None:
            return longest
        if not isinstance(policy, dict):
            raise invalid(
                "output_expires_after must be an object with anchor and seconds",
                param="output_expires_after",
            )
        return expiry_seconds(
            policy.get("anchor"),
            policy.get("seconds"),
            longest,
            param="output_expires_after.{}",
        )

    async def get(self, caller: Caller, batch_id: str) -> dict:
        return await self._render(await self._owned(caller, batch_id))

    async def finished_lines(self, caller: Caller, batch_id: str) -> bytes:
        """The output lines made so far, as JSONL in input order: the output file once the
        batch has one, else the completed lines' results (an extension: OpenAI publishes
        output only at the end, and a batch over free budgets can take days)."""
        doc = await self._owned(caller, batch_id)
        if doc.get("output_file_id"):
            data, _ = await self.files.content(doc["output_file_id"], caller)
            return data
        results = await self.store.line_results(batch_id)
        lines = [result.encode() for _, outcome, result in results if outcome == "completed"]
        if not lines:
            # The batch may have been finalised (lines dropped) since it was read.
            doc = await self._owned(caller, batch_id)
            if doc.get("output_file_id"):
                return (await self.files.content(doc["output_file_id"], caller))[0]
        return b"".join(line + b"\n" for line in lines)

    async def list(self, caller: Caller, *, limit: int, after: str | None) -> tuple[list, bool]:
        docs = [d for d in await self.store.list_docs(BATCH_KIND) if caller.owns(d["owner"])]
        docs.sort(key=lambda d: (d.get("sort_key") or [d["created_at"]], d["id"]), reverse=True)
        if after is not None:
            ids = [d["id"] for d in docs]
            docs = docs[ids.index(after) + 1 :] if after in ids else []
        return [await self._render(d) for d in docs[:limit]], len(docs) > limit

    async def cancel(self, caller: Caller, batch_id: str) -> dict:
        await self._owned(caller, batch_id)
        now = int(self.clock.now())
        doc = await self.store.patch_doc(
            BATCH_KIND,
            batch_id,
            {"status": "cancelling", "cancelling_at": now},
            when={"status": ["validating", "in_progress"]},
        )
        if doc is None:
            doc = await self._owned(caller, batch_id)
            if doc["status"] not in ("cancelling", "cancelled"):
                raise ApiError(
                    409,
                    f"the batch is {doc['status']} and can no longer be cancelled",
                    param="batch_id",
                    code="batch_not_cancellable",
                    headers=NO_RETRY,  # the SDKs retry a 409; a finished batch stays finished
                )
        self.runner.wake()
        return await self._render(doc)

    async def _owned(self, caller: Caller, batch_id: str) -> dict:
        doc = await self.store.get_doc(BATCH_KIND, batch_id)
        if doc is None or not caller.owns(doc["owner"]):
            raise not_found(batch_id)
        return doc

    async def _render(self, doc: dict) -> dict:
        if doc["status"] not in ACTIVE:
            return public_batch(doc)
        counts = await self.store.line_counts(doc["id"])
        body = public_batch(doc, counts)
        if doc["status"] == "in_progress":
            left = doc["request_counts"]["total"] - finished_lines(counts)
            rooms = await account_rooms(
                self.pool, self.store, self.settings, self.clock, held=False
            )
            at, _ = estimate_completion(
                doc["line_neurons"],
                left,
                doc["typical_seconds"],
                rooms,
                self.settings,
                self.clock.now(),
                await self._key_room(doc),
            )
            body["estimated_completion_at"] = None if at is None else int(at)
        return body

    async def _key_room(self, doc: dict) -> tuple[int | None, int | None]:
        """The owner's quota as it stands, in lines; none for a key since removed (its lines
        fail as they come up) or without a quota to read."""
        if self.quota is None:
            return None, None
        try:
            owner = self.quota.caller(doc["owner"])
        except ApiError:
            return None, None
        line_images = doc.get("line_images", 1)  # batches made before it was stored: n=1
        return await key_lines(
            self.store, owner, self.clock.now(), line_images, doc["line_neurons"]
        )


def _metadata(value: Any) -> dict | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or len(value) > 16
        or not all(isinstance(k, str) and len(k) <= 64 for k in value)
        or not all(isinstance(v, str) and len(v) <= 512 for v in value.values())
    ):
        raise invalid(
            "metadata must be an object of at most 16 string values (keys up to 64 "
            "characters, values up to 512)",
            param="metadata",
        )
    return value


@dataclass
class BatchParts:
    """The Files and Batch APIs' long-lived objects, one set per app (`app.state.batches`)."""

    files: FileStore
    images: ImageStore  # the images batch answers link to (BATCH_OUTPUT_TTL)
    runner: BatchRunner
    service: BatchService


def open_batches(services: Any) -> BatchParts:
    """Build the parts over the app's settings, clock, state store and pool. Blobs live in
    `DATA_DIR/files/`, which replicas sharing batches must share."""
    settings, clock, store = services.settings, services.clock, services.store
    blobs = DiskBlobs(Path(settings.data_dir) / "files", clock)
    files = FileStore(store, blobs, clock, settings)
    images = ImageStore(blobs, settings.batch_output_ttl)  # type: ignore[arg-type]
    # The batch lines' own work layer, over the pool limited to the account each line was
    # given (`LinePool`): the same repeats, kept results, seeded cache, key quotas and usage
    # rows as live requests (a line over its key's quota goes back unrun, like a spent pool).
    work = ImageWork(
        settings, LinePool(services.pool), store, clock, services.metrics, quota=services.quota
    )
    runner = BatchRunner(
        settings=settings,
        clock=clock,
        store=store,
        pool=services.pool,
        files=files,
        images=images,
        work=work,
        metrics=services.metrics,
    )
    service = BatchService(
        settings=settings,
        clock=clock,
        store=store,
        pool=services.pool,
        files=files,
        runner=runner,
        quota=services.quota,  # a batch runs no faster than its owner's quota: its estimate
    )
    return BatchParts(files, images, runner, service)
