"""Repeats attach to earlier work: in-flight markers and kept results in the state store.

A request is a repeat when it carries the same `Idempotency-Key` from the same caller, or is an
SDK retry (`x-stainless-retry-count` >= 1) of the same request (same `Fingerprint.request`)
from the same caller. Two kinds of store key, both owned by the caller's name:

- `idem:<caller>:<blake2 of the key>`: claimed (SET NX PX) by the first request with that key
  for as long as it works; its finished result is kept under the same key;
- `fp:<caller>:<fingerprint>`: claimed when a caller leaves while its calls are in flight, so
  the SDK's retry finds and waits for that work; the result is kept under it when done.

A marker's value is `<fingerprint> <holder>`: a reused key with another request is told apart
without reading the result, and only the holder releases it. A repeat waits while the marker
is held (on this replica through a local event, on another by polling the store), then
collects the kept result; no result after the marker went means the work failed, and the
repeat tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from hashlib import blake2b

from flux_proxy.errors import ApiError
from flux_proxy.store.base import StateStore
from flux_proxy.work.results import WorkResult, decode_result, encode_result

POLL_SECONDS = 0.25


def idempotency_store_key(caller: str, key: str) -> str:
    # Hashed: a key is any text the client chose, of any length.
    return f"idem:{caller}:{blake2b(key.encode(), digest_size=20).hexdigest()}"


def retry_store_key(caller: str, fingerprint: str) -> str:
    return f"fp:{caller}:{fingerprint}"


def key_reused() -> ApiError:
    return ApiError(
        422,
        "this Idempotency-Key was already used with a different request; send a new key "
        "for a new request",
        param="Idempotency-Key",
        code="idempotency_key_reused",
    )


def still_in_progress() -> ApiError:
    return ApiError(
        409,
        "the earlier request with this Idempotency-Key is still being worked on; retry later",
        code="request_in_progress",
        headers={"retry-after": "5"},
    )


class Repeats:
    def __init__(self, store: StateStore, *, result_ttl: float, holder: str):
        self.store = store
        self.result_ttl = result_ttl
        self.holder = holder
        self._ended: dict[str, asyncio.Event] = {}  # markers held here -> set when released

    async def collect(self, key: str, fingerprint: str) -> WorkResult | None:
        """The result kept under `key`, marked as replayed; 422 when it was another request's."""
        data = await self.store.get_result(key)
        if data is None:
            return None
        kept_for, _, body = data.partition(b"\n")
        if kept_for.decode() != fingerprint:
            raise key_reused()
        result = decode_result(body)
        result.replayed = True
        return result

    async def keep(self, keys: list[str], fingerprint: str, result: WorkResult) -> None:
        data = fingerprint.encode() + b"\n" + encode_result(result)
        for key in keys:
            await self.store.put_result(key, data, self.result_ttl)

    def _value(self, fingerprint: str) -> str:
        return f"{fingerprint} {self.holder}"

    async def claim(self, key: str, fingerprint: str, ttl: float) -> str | None:
        """None when this request now holds `key`; else the holder's request fingerprint."""
        current = await self.store.claim(key, self._value(fingerprint), ttl)
        if current is None:
            self._ended.setdefault(key, asyncio.Event())
            return None
        return current.split(" ", 1)[0]

    def hold_locally(self, key: str) -> None:
        """Let repeats on this replica wait on an event for `key` before its claim is made."""
        self._ended.setdefault(key, asyncio.Event())

    async def release(self, key: str, fingerprint: str) -> None:
        try:
            await self.store.unclaim(key, self._value(fingerprint))
        finally:
            event = self._ended.pop(key, None)
            if event is not None:
                event.set()

    async def wait(
        self, key: str, limit: float, on_wait: Callable[[], None] = lambda: None
    ) -> None:
        """Until nobody holds `key` (the work under it ended, kept or failed); 409 after
        `limit` seconds. `on_wait` is called when there is something to wait for."""
        give_up = time.monotonic() + limit  # a wait, like the slots': not wall time
        while True:
            event = self._ended.get(key)
            if event is not None:
                on_wait()
                try:
                    async with asyncio.timeout(max(0.0, give_up - time.monotonic())):
                        await event.wait()
                except TimeoutError:
                    raise still_in_progress() from None
                return
            if await self.store.holder_of(key) is None:
                return
            on_wait()
            if time.monotonic() >= give_up:
                raise still_in_progress()
            await asyncio.sleep(POLL_SECONDS)
