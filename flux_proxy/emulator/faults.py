"""Fault injection: rules that make chosen calls fail the ways Cloudflare sometimes does.

A rule matches an account (or every account) and optionally a model, fires `count` times
(None: for ever) with probability `rate`. The draw uses a seeded `random.Random`, so a test that
injects 30% failures sees the same calls fail on every run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

# `mislabelled`: a normal answer in the other image format under the documented label (JPEG
# bytes as image/png, as SDXL-lightning has been seen doing); billed like any success.
FaultKind = Literal["error", "drop", "garbage", "no_image", "timeout", "mislabelled"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

# The Cloudflare code an `error` rule uses when it names only a status.
_CODE_FOR_STATUS = {
    400: 5006,
    401: 10000,
    403: 10000,
    405: 5019,
    408: 3007,
    413: 3006,
    429: 3040,
}
_SERVER_ERROR_CODE = 3043  # Workers AI's "Internal server error"
TIMEOUT_DEFAULT_SECONDS = 3600.0  # "a long time": longer than any client will wait


@dataclass
class FaultRule:
    kind: FaultKind
    account: str | None = None  # None: every account
    model: str | None = None  # None: every model
    status: int = 500
    code: int | None = None
    message: str | None = None
    retry_after: float | None = None
    count: int | None = None  # None: every matching call
    rate: float = 1.0
    latency: float = 0.0  # seconds to wait before the fault shows (timeout: before answering)
    id: int = 0
    fired: int = field(default=0)

    @property
    def error_code(self) -> int:
        if self.code is not None:
            return self.code
        return _CODE_FOR_STATUS.get(self.status, _SERVER_ERROR_CODE)

    @property
    def spent(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def matches(self, account: str, model: str) -> bool:
        return (self.account is None or self.account == account) and (
            self.model is None or self.model == model
        )

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def parse_rule(data: Any) -> FaultRule:
    """A rule from the control endpoint's JSON; ValueError names the bad field."""
    if not isinstance(data, dict):
        raise ValueError("a fault rule is a JSON object")
    known = {name for name in FaultRule.__dataclass_fields__ if name not in ("id", "fired")}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")
    kind = data.get("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    rule = FaultRule(kind=kind)
    rule.account = _optional(data, "account", str)
    rule.model = _optional(data, "model", str)
    rule.status = _optional(data, "status", int) or 500
    rule.code = _optional(data, "code", int)
    rule.message = _optional(data, "message", str)
    rule.retry_after = _optional(data, "retry_after", float)
    rule.count = _optional(data, "count", int)
    rate = _optional(data, "rate", float)
    rule.rate = 1.0 if rate is None else rate
    rule.latency = _optional(data, "latency", float) or 0.0
    if not 100 <= rule.status <= 599:
        raise ValueError("status must be an HTTP status (100-599)")
    if rule.count is not None and rule.count < 1:
        raise ValueError("count must be at least 1, or null for every call")
    if not 0.0 <= rule.rate <= 1.0:
        raise ValueError("rate must be between 0 and 1")
    if rule.latency < 0 or (rule.retry_after is not None and rule.retry_after < 0):
        raise ValueError("latency and retry_after must not be negative")
    return rule


def _optional(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if value is None:
        return None
    numeric = kind in (int, float) and not isinstance(value, bool)
    if kind is float and numeric and isinstance(value, int | float):
        return float(value)
    if kind is int and numeric and isinstance(value, int):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"{name} must be a {kind.__name__} or null")


class FaultBook:
    """The active rules, tried in the order they were added."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self._random = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._next_id = 1

    def add(self, rule: FaultRule) -> FaultRule:
        rule.id = self._next_id
        self._next_id += 1
        self._rules.append(rule)
        return rule

    def clear(self) -> None:
        self._rules.clear()
        self._random = random.Random(self._seed)

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def pick(self, account: str, model: str) -> FaultRule | None:
        """The rule that fires for this call, if any; counts the firing."""
        for rule in self._rules:
            if rule.spent or not rule.matches(account, model):
                continue
            if rule.rate < 1.0 and self._random.random() >= rule.rate:
                continue
            rule.fired += 1
            return rule
        return None
