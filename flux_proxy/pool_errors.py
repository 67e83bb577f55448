"""What the pool tells a caller when no account made the image.

Kept apart from the pool's mechanics: the choice of status, code and `Retry-After` is policy
that the API layer and the openai SDK's retry logic depend on. Messages never carry
Cloudflare's raw body or a token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from flux_proxy.clock import iso
from flux_proxy.errors import NO_RETRY, ApiError
from flux_proxy.job import ImageJob
from flux_proxy.settings import AccountConfig
from flux_proxy.upstream.classify import Attempt, OutcomeKind

NO_RETRY_ABOVE = 60.0  # longer waits tell the openai SDK not to retry (each retry may cost)


@dataclass
class RequestTally:
    """What one request learned while going through the accounts."""

    deadline: float
    tried: set[int] = field(default_factory=set)
    returns: list[float] = field(default_factory=list)  # when skipped/blocked accounts return
    exhausted: int = 0  # parked, cooling or out of budget
    disabled: int = 0
    model_unavailable: int = 0
    unavailable_reasons: list[str] = field(default_factory=list)  # what each account said
    transient: int = 0
    deadline_hit: bool = False


def nothing_usable(run: RequestTally, job: ImageJob, deadline: float, now: float) -> ApiError:
    """The error for a request every account failed or was skipped for."""
    if run.deadline_hit:
        return ApiError(
            504,
            f"No account produced an image within the {deadline:g} s request deadline",
            code="upstream_timeout",
        )
    if run.transient:
        # An account failed for a passing reason and is not blocked: a retry may succeed.
        return ApiError(
            502,
            f"Workers AI failed on every account tried ({run.transient} attempts)",
            code="upstream_unavailable",
        )
    if run.returns:
        earliest = min(run.returns)
        wait = max(1, math.ceil(earliest - now))
        # Said to the second: a park ends at exactly 00:00:00 UTC, not at now + whole seconds.
        at = math.ceil(earliest) if earliest - now >= 1 else math.ceil(now) + wait
        headers = {"Retry-After": str(wait)}
        if wait > NO_RETRY_ABOVE:
            headers["x-should-retry"] = "false"
        return ApiError(
            429,
            f"Every usable account is out of neurons or rate limited; the earliest is "
            f"usable again in {wait} s (at {iso(at)})",
            code="accounts_exhausted",
            headers=headers,
        )
    if run.model_unavailable:
        # Why (terms not accepted, a private model, a paid plan): the per-account detail of
        # /health is for admin keys, and the caller needs the reason to act on it.
        reasons = list(dict.fromkeys(run.unavailable_reasons))[:3]
        why = f": {'; '.join(reasons)}" if reasons else ""
        return ApiError(
            503,
            f"The model {job.model.short_name} is not available on any configured account{why}",
            code="model_unavailable",
            headers=NO_RETRY,  # each account skips the model for an hour: not the SDK's backoff
        )
    return ApiError(
        503,
        "No usable Cloudflare account is configured (none set, or every token was rejected)",
        code="no_usable_account",
        headers=NO_RETRY,  # disabled until a token changes
    )


def beyond_every_budget(
    job: ImageJob,
    accounts: list[AccountConfig],
    budget_for: Callable[[AccountConfig], float | None],
    keep_back: float,
) -> ApiError | None:
    """An image whose estimate is more than the largest daily budget it may use (less
    `keep_back`, what batch lines leave for live requests) can never be made, today or after
    00:00 UTC: say so as the caller's 400 (change size, steps or model), not as a 429 to wait
    out. A budget of None is unlimited."""
    budgets = [budget_for(account) for account in accounts]
    if not budgets or any(budget is None for budget in budgets):
        return None
    largest = max(max(0.0, budget - keep_back) for budget in budgets if budget is not None)
    estimate = job.estimated_neurons()
    if estimate <= largest:
        return None
    return ApiError(
        400,
        f"This image is estimated at {estimate:,.2f} neurons, more than any account's daily "
        f"budget ({largest:,.2f}), so no account can ever make it; ask for a smaller size, "
        f"fewer steps or another model",
        code="exceeds_daily_budget",
    )


def rejected_input(attempt: Attempt) -> ApiError:
    """Cloudflare refused the input itself: the caller's fault, no other account is tried.
    A refused request form (405) is the proxy's fault, and no account would answer otherwise."""
    if attempt.kind is OutcomeKind.CONFIG_ERROR:
        # Refused the same way on every account: a retry of the SDK's would be another call.
        return ApiError(502, attempt.message, code="upstream_configuration_error", headers=NO_RETRY)
    status = 413 if attempt.kind is OutcomeKind.TOO_LARGE else 400
    return ApiError(status, attempt.message, param=attempt.param, code="upstream_rejected_input")


def busy_error(job: ImageJob, concurrency: int) -> ApiError:
    # A slot frees when a call ends, so one typical call of this model is a fair wait.
    wait = max(1, math.ceil(job.model.typical_seconds))
    return ApiError(
        429,
        f"Every usable account is busy ({concurrency} calls each); try again in about {wait} s",
        code="accounts_busy",
        headers={"Retry-After": str(wait)},
    )
