"""Routing strategies: the order in which the pool offers a request to its accounts.

Pure functions, so each strategy is testable without a pool, a store or a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from flux_proxy.settings import AccountConfig

Strategy = Literal["ordered", "round_robin", "most_remaining"]


def order_accounts(
    strategy: Strategy,
    accounts: Sequence[AccountConfig],
    *,
    cursor: int = 0,
    remaining: Mapping[int, float | None] | None = None,
) -> list[AccountConfig]:
    """Accounts in the order to try them.

    ordered: by N, like the seed. round_robin: by N, rotated one further per request
    (`cursor`). most_remaining: the most neurons left today first (None = unlimited, which
    counts as most), ties by N.
    """
    by_number = sorted(accounts, key=lambda account: account.number)
    if not by_number:
        return []
    if strategy == "round_robin":
        start = cursor % len(by_number)
        return by_number[start:] + by_number[:start]
    if strategy == "most_remaining":
        left = remaining or {}

        def key(account: AccountConfig) -> tuple[float, int]:
            value = left.get(account.number)
            return (-(math.inf if value is None else value), account.number)

        return sorted(by_number, key=key)
    return by_number
