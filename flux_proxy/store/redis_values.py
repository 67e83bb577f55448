"""How numbers and lifetimes are written for Redis, shared by every section of `RedisStore`."""

from __future__ import annotations

import math

USAGE_TTL = 3 * 86400


def _num(value: float) -> str:
    return repr(float(value))


def _seconds(value: float) -> int:
    """A positive whole-second TTL (Redis refuses 0 and negatives)."""
    return max(1, math.ceil(value))
