"""Big batch lines kept on disk, not in the state store.

An edits line carries its images as `data:` URLs, so a 200 MB input file could put 200 MB of
line text into Redis (or the SQLite state) if every line were queued as it is. Lines over
`INLINE_LINE_BYTES` are written, once, into one blob per batch (`batch-lines-<batch id>`,
under `DATA_DIR/files/`, which replicas sharing batches share already), and the store's line
is a small reference instead: `@{"custom_id", "at", "bytes"}`. A line's JSON text always
starts with `{` (or a space), never `@`, so the two cannot be confused.

The blob is the batch's own copy, not the uploaded input file: deleting the input file, or
its expiry, cannot take lines from a running batch. It lives as long as the batch's lines
(the completion window plus BATCH_OUTPUT_TTL) and goes when the batch is finalised.
"""

from __future__ import annotations

from typing import Any

import orjson

from flux_proxy.errors import ApiError
from flux_proxy.work.file_blobs import DiskBlobs

INLINE_LINE_BYTES = 8 * 1024  # a prompt-only line is far smaller; a data: URL far bigger
_REFERENCE = "@"


def lines_blob_key(batch_id: str) -> str:
    return f"batch-lines-{batch_id}"


async def queued_payloads(
    blobs: DiskBlobs, batch_id: str, payloads: list[str], ttl: float
) -> list[str]:
    """What the store queues for `payloads`: small lines as they are, big ones as references
    into the batch's lines blob (written here, before anything is queued)."""
    kept: list[bytes] = []
    size = 0
    queued = []
    for text in payloads:
        data = text.encode()
        if len(data) <= INLINE_LINE_BYTES:
            queued.append(text)
            continue
        custom_id = orjson.loads(data).get("custom_id")
        reference = {"custom_id": custom_id, "at": size, "bytes": len(data)}
        queued.append(_REFERENCE + orjson.dumps(reference).decode())
        kept.append(data)
        size += len(data)
    if kept:
        await blobs.put_blob(lines_blob_key(batch_id), b"".join(kept), "application/jsonl", ttl)
    return queued


def custom_id_of(payload: str) -> Any:
    """A queued line's custom_id, without reading a big line from disk."""
    return orjson.loads(payload.removeprefix(_REFERENCE)).get("custom_id")


async def line_of(blobs: DiskBlobs, batch_id: str, payload: str) -> dict:
    """A queued line as it was in the input file; an ApiError (the line fails alone) if its
    blob is gone, e.g. DATA_DIR/files was not shared with this replica."""
    if not payload.startswith(_REFERENCE):
        return orjson.loads(payload)
    reference = orjson.loads(payload[1:])
    data = await blobs.read_range(lines_blob_key(batch_id), reference["at"], reference["bytes"])
    if data is None or len(data) != reference["bytes"]:
        raise ApiError(
            410,
            "this line's text is no longer on the proxy's disk (DATA_DIR/files)",
            code="batch_line_missing",
        )
    return orjson.loads(data)
