"""What an images request's headers ask of the work layer, and the headers that answer it.

- `Idempotency-Key`: the same key from the same caller is the same work (Stripe's and
  OpenAI's convention); at most 255 characters.
- `x-stainless-retry-count` >= 1: the openai SDKs' own automatic retry of a request that timed
  out or failed; with the same fingerprint and caller it attaches to the earlier work.
- `Cache-Control: no-cache` / `no-store`: the seeded cache's policy.

Answers carry `x-flux-cache: hit|miss|bypass`, and `x-flux-replayed: true` when served from
earlier work.
"""

from __future__ import annotations

from starlette.requests import Request

from flux_proxy.api.caller import caller_of
from flux_proxy.errors import invalid
from flux_proxy.work.cache import CachePolicy
from flux_proxy.work.first_look import FirstLook
from flux_proxy.work.results import WorkResult

MAX_IDEMPOTENCY_KEY = 255


# The request headers read here, as ASGI gives them (names in lower case).
_READ = (b"idempotency-key", b"x-stainless-retry-count", b"cache-control")


def work_options(request: Request) -> dict:
    """Keyword arguments for `ImageWork.produce` (besides the request and its id)."""
    # One pass over the raw headers: on the hot path, cheaper than three `Headers` lookups,
    # each of which scans the whole list. The first of a repeated header wins, as there.
    found: dict[bytes, str] = {}
    for name, value in request.scope["headers"]:
        if name in _READ and name not in found:
            found[name] = value.decode("latin-1")
    key = found.get(b"idempotency-key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise invalid(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                param="Idempotency-Key",
            )
    retry = found.get(b"x-stainless-retry-count", "").strip()
    return {
        "caller": caller_of(request.scope).name,
        "idempotency_key": key,
        "sdk_retry": retry.isdigit() and int(retry) >= 1,
        "cache": CachePolicy.from_header(found.get(b"cache-control")),
    }


def work_headers(result: WorkResult) -> dict[str, str]:
    return first_look_headers(FirstLook(result.cache, result.replayed))


def first_look_headers(look: FirstLook) -> dict[str, str]:
    """The headers for what is known; a streamed answer sends them before its images."""
    headers = {}
    if look.cache is not None:
        headers["x-flux-cache"] = look.cache
    if look.replayed:
        headers["x-flux-replayed"] = "true"
    return headers
