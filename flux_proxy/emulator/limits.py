"""What Cloudflare counts per account: neurons per UTC day, and requests per minute."""

from __future__ import annotations

from collections import deque

from flux_proxy.clock import Clock, next_utc_midnight, utc_day


class NeuronLedger:
    """Neurons used per account today; an allocation of 0 or None means no limit (Paid plan)."""

    def __init__(self, clock: Clock, daily_neurons: float | None) -> None:
        self.clock = clock
        self.daily_neurons = daily_neurons
        self.overrides: dict[str, float | None] = {}  # per-account allocations
        self._used: dict[str, tuple[str, float]] = {}  # account -> (UTC day, neurons)

    def allocation(self, account: str) -> float | None:
        value = self.overrides.get(account, self.daily_neurons)
        return value or None

    def used(self, account: str) -> float:
        day, neurons = self._used.get(account, ("", 0.0))
        return neurons if day == utc_day(self.clock.now()) else 0.0

    def set_used(self, account: str, neurons: float) -> None:
        self._used[account] = (utc_day(self.clock.now()), float(neurons))

    def charge(self, account: str, neurons: float) -> None:
        self.set_used(account, self.used(account) + neurons)

    def exhausted(self, account: str) -> bool:
        allocation = self.allocation(account)
        return allocation is not None and self.used(account) >= allocation

    def next_reset(self) -> float:
        return next_utc_midnight(self.clock.now())

    def clear(self) -> None:
        self._used.clear()
        self.overrides.clear()


class RateLimiter:
    """A sliding one-minute window of admitted requests per account."""

    WINDOW = 60.0

    def __init__(self, clock: Clock, per_minute: int) -> None:
        self.clock = clock
        self.per_minute = per_minute  # 0: no limit
        self._seen: dict[tuple[str, str], deque[float]] = {}

    def admit(self, account: str, bucket: str = "", limit: int | None = None) -> float | None:
        """Record the request and return None, or return the seconds until one would fit.
        `bucket` names a window of its own (a model with its own limit, `limit` per minute);
        otherwise the account's shared window and `per_minute` apply."""
        per_minute = self.per_minute if limit is None else limit
        if per_minute <= 0:
            return None
        now = self.clock.now()
        seen = self._seen.setdefault((account, bucket), deque())
        while seen and seen[0] <= now - self.WINDOW:
            seen.popleft()
        if len(seen) >= per_minute:
            return max(1.0, seen[0] + self.WINDOW - now)
        seen.append(now)
        return None

    def clear(self) -> None:
        self._seen.clear()
