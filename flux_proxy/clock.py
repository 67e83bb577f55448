"""One injectable source of time, so "next 00:00 UTC" is testable without waiting a day."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


class Clock:
    """Wall-clock time in Unix seconds. Tests pass a `FrozenClock` instead."""

    def now(self) -> float:
        return time.time()


class FrozenClock(Clock):
    """A clock that only moves when told to."""

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def set(self, timestamp: float) -> None:
        self._now = timestamp


def utc_day(timestamp: float) -> str:
    """The UTC calendar day a timestamp falls in, as `YYYY-MM-DD` (Cloudflare's budget period)."""
    # Asked several times per request, for today and for the oldest day of kept history: a
    # small table of days seen, not one last answer that the two calls would keep evicting.
    index = int(timestamp // 86400)  # UTC days are 86,400 s long in POSIX time
    day = _days.get(index)
    if day is None:
        if len(_days) > 64:
            _days.clear()
        day = _days[index] = datetime.fromtimestamp(index * 86400, UTC).strftime("%Y-%m-%d")
    return day


_days: dict[int, str] = {}


def next_utc_midnight(timestamp: float) -> float:
    """The first 00:00 UTC strictly after `timestamp`: when daily neuron allocations reset."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    midnight = datetime(moment.year, moment.month, moment.day, tzinfo=UTC) + timedelta(days=1)
    return midnight.timestamp()


def iso(timestamp: float | None) -> str | None:
    """An ISO-8601 UTC rendering for health pages and logs."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
