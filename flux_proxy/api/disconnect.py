"""Stop working for a caller who has gone.

Uvicorn does not cancel a handler when its client disconnects: without this, an abandoned
request would hold its account slot and its neuron reservation, and keep its upstream call
running, until Workers AI answered (up to UPSTREAM_READ_TIMEOUT). Once the body has been read,
the only message left to receive is `http.disconnect`, so waiting for it while the work runs
costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`await work`, unless the client disconnects first: then the work is cancelled (its
    `finally` blocks give slots and reservations back) and `ClientDisconnect` is raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Cancelled ourselves (server shutdown), or one side finished: stop whatever still runs.
        watcher.cancel()
        if not task.done():
            task.cancel()
        for pending in (watcher, task):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await pending
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()
