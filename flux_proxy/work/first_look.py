"""What `ImageWork.produce` knows before any image is made: whether the answer is a replay and
what the seeded cache said. A streamed answer sends its headers before its images, so it
learns `x-flux-cache` / `x-flux-replayed` from this rather than from the finished `WorkResult`.

It is known once the repeat check and every image's cache lookup are done (store reads, no
upstream call). A repeat that has to wait for identical work still in flight (the same
Idempotency-Key, an SDK retry, or a seeded image another request is making) cannot know yet
whether it will be a replay or a hit: it says so with `None`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flux_proxy.work.results import CacheStatus


@dataclass(frozen=True)
class FirstLook:
    cache: CacheStatus | None  # None: not known before the work ends
    replayed: bool | None
    created: int | None = None  # a replay's: the `created` of the work it replays


OnFirstLook = Callable[[FirstLook], None]

UNKNOWN = FirstLook(None, None)


class FirstLookSink:
    """Tells `on_first_look` once: the first `tell`, or every image's lookup gathered."""

    def __init__(self, on_first_look: OnFirstLook | None, images: int) -> None:
        self._on_first_look = on_first_look
        self._images = images
        self._seen: dict[int, CacheStatus | None] = {}
        self.told = on_first_look is None

    def tell(self, look: FirstLook) -> None:
        if not self.told:
            self.told = True
            self._on_first_look(look)  # type: ignore[misc]

    def image(self, index: int, cache: CacheStatus | None) -> None:
        """Image `index` was found in the cache ("hit"), will be made here ("miss"), or waits
        for an identical image in flight (None)."""
        if self.told or index in self._seen:
            return
        self._seen[index] = cache
        if len(self._seen) < self._images:
            return
        found = set(self._seen.values())
        if None in found:
            self.tell(UNKNOWN)
        else:
            self.tell(FirstLook("hit" if found == {"hit"} else "miss", False))
