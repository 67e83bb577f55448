"""One batch line's way into the work layer: `run_line`, with the line as Idempotency-Key, and
`LinePool`, the pool as that work layer sees it (only the account the runner chose, keeping
the live reserve back)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from flux_proxy.api.parse import ImageRequest
from flux_proxy.work.results import WorkResult

# The accounts the runner chose for the line being made, and the neurons it must leave, seen
# by `LinePool` inside the work layer (whose tasks inherit the context).
_LINE_LIMITS: ContextVar[tuple[tuple[int, ...], float] | None] = ContextVar(
    "batch_line_limits", default=None
)


class LinePool:
    """The pool as the batch runner's work layer sees it: within a line, only the account the
    runner chose, keeping the live reserve back; otherwise the pool itself."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def generate(self, job, *, request_id: str, progress=None):
        limits = _LINE_LIMITS.get()
        if limits is None:
            return await self._pool.generate(job, request_id=request_id, progress=progress)
        accounts, keep_back = limits
        return await self._pool.generate(
            job, request_id=request_id, progress=progress, accounts=accounts, keep_back=keep_back
        )


async def run_line(
    work: Any,
    image_request: ImageRequest,
    *,
    caller: str,
    request_id: str,
    line_key: str,
    accounts: list[int],
    keep_back: float,
) -> WorkResult:
    """The one place a batch line asks for its images: through the work layer, with the line
    as its Idempotency-Key, so a line taken over from a dead runner collects the images that
    runner already paid for (kept RESULT_TTL_SECONDS) instead of paying again."""
    token = _LINE_LIMITS.set((tuple(accounts), keep_back))
    try:
        return await work.produce(
            image_request, caller=caller, request_id=request_id, idempotency_key=line_key
        )
    finally:
        _LINE_LIMITS.reset(token)
