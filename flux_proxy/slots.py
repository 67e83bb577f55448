"""Per-account concurrency slots.

A semaphore per account cannot answer "wait until *any* of these accounts has room", which is
what a request needs when every account it may use is busy; a counter per account plus one
"a slot was freed" signal can. Giving a slot back is synchronous, so it is safe in `finally`
even while the task is being cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable


class SlotBoard:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an account needs at least one slot")
        self.limit = limit
        self._in_use: dict[int, int] = {}
        self._freed = asyncio.Event()

    def in_use(self, account: int) -> int:
        return self._in_use.get(account, 0)

    def has_room(self, account: int) -> bool:
        return self.in_use(account) < self.limit

    def try_take(self, account: int) -> bool:
        """Take a slot if one is free, without waiting."""
        if not self.has_room(account):
            return False
        self._in_use[account] = self.in_use(account) + 1
        return True

    def give_back(self, account: int) -> None:
        count = self.in_use(account)
        if count <= 1:
            self._in_use.pop(account, None)
        else:
            self._in_use[account] = count - 1
        # Wake every waiter; each re-checks the accounts it cares about.
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    async def wait_for_any(self, accounts: Iterable[int], seconds: float) -> bool:
        """True as soon as one of `accounts` has a free slot; False after `seconds`."""
        wanted = list(accounts)
        give_up = time.monotonic() + max(0.0, seconds)
        while not any(self.has_room(account) for account in wanted):
            left = give_up - time.monotonic()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):
                    await self._freed.wait()
            except TimeoutError:
                return any(self.has_room(account) for account in wanted)
        return True
