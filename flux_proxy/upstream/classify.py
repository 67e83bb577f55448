"""Every upstream outcome sorted into one `OutcomeKind`.

Pure functions over (HTTP status, headers, parsed body) or an exception, following the error
table in workers-ai.md. The pool decides what to do with each kind; nothing here does I/O.
Messages are built here, once, and are safe to show a caller: no tokens, no whole raw bodies,
only Cloudflare's own error message, trimmed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import aiohttp

from flux_proxy.job import GeneratedImage

MAX_UPSTREAM_MESSAGE = 300


class OutcomeKind(StrEnum):
    SUCCESS = "success"
    QUOTA_EXHAUSTED = "quota_exhausted"  # 3036/4006 or the "daily free allocation" text
    RATE_LIMITED = "rate_limited"  # 429 other → cool down (Retry-After or setting)
    CAPACITY = "capacity"  # 429 3040 → short cool down
    AUTH = "auth"  # 401/403 10000, 9109, 3023 → disable
    # 403 5035 / 5018 / 3041 / 5016, 400 5007, 404 3042 → skip the account for that model
    MODEL_UNAVAILABLE = "model_unavailable"
    TRANSIENT = "transient"  # 5xx, 408, timeout, connection, garbage, no image
    INPUT_ERROR = "input_error"  # 400 5006/3030/5004/3003/3039 → straight back to caller, 400
    TOO_LARGE = "too_large"  # 413 / 3006 → straight back, 413
    # 405 5019 / 5005: the proxy's request form is refused (deprecated SDK, LoRA) → every
    # account would answer the same, so straight back as the proxy's own fault, 502
    CONFIG_ERROR = "config_error"


@dataclass
class Attempt:
    kind: OutcomeKind
    status: int | None  # HTTP status, None when no answer came
    code: int | None  # Cloudflare error code
    message: str  # short, safe to show a caller (no tokens, no raw bodies)
    retry_after: float | None
    neurons: float | None  # cf-ai-neurons
    image: GeneratedImage | None
    latency: float
    # The request reached Cloudflare but no answer came back: it may have been billed, so a
    # retry elsewhere can pay twice ("duplicate spend"). The pool counts such calls.
    maybe_billed: bool = False
    # For input errors: the request parameter Cloudflare complained about, when it names one.
    param: str | None = None


QUOTA_CODES = frozenset({3036, 4006})
CAPACITY_CODES = frozenset({3040})
AUTH_CODES = frozenset({10000, 9109, 3023})
MODEL_CODES = frozenset({5035, 5007, 3042, 5018, 3041, 5016})
TERMS_CODE = 5016  # "User has not agreed to ... model terms": the account must accept them
INPUT_CODES = frozenset({5006, 3030, 5004, 3003, 3039})
CONFIG_CODES = frozenset({5019, 5005})
TOO_LARGE_CODES = frozenset({3006})
TIMEOUT_CODES = frozenset({3007, 3008})

_QUOTA_TEXT = re.compile(r"daily free allocation|free allocation|\bneurons?\b", re.IGNORECASE)
_INPUT_IMAGE = re.compile(r"input[ _]image", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def classify(
    status: int,
    headers: Mapping[str, str],
    body: Any,
    *,
    latency: float = 0.0,
    neurons: float | None = None,
    now: float | None = None,
) -> Attempt:
    """Sort an answer that carried no usable image.

    `body` is the parsed JSON (or None when the body was not JSON). Success answers with an
    image never come here: the client builds those itself.
    """
    code, upstream_message = first_error(body)
    retry_after = parse_retry_after(headers.get("Retry-After"), now=now)
    kind = _kind_for(status, code, upstream_message, body)
    return Attempt(
        kind=kind,
        status=status,
        code=code,
        message=_message_for(kind, status, code, upstream_message),
        retry_after=retry_after,
        neurons=neurons,
        image=None,
        latency=latency,
        param=_param_for(kind, upstream_message),
    )


def _kind_for(status: int, code: int | None, message: str, body: Any) -> OutcomeKind:
    # The daily allocation is recognised by code or by text in any status: it decides
    # whether an account is parked until midnight, so it must not hide behind a 400 or 500.
    if code in QUOTA_CODES or (message and _QUOTA_TEXT.search(message)):
        return OutcomeKind.QUOTA_EXHAUSTED
    if code in CAPACITY_CODES:
        return OutcomeKind.CAPACITY
    if status == 429:
        return OutcomeKind.RATE_LIMITED
    if status == 413 or code in TOO_LARGE_CODES:
        return OutcomeKind.TOO_LARGE
    if code in CONFIG_CODES or status == 405:
        return OutcomeKind.CONFIG_ERROR
    if code in MODEL_CODES or status == 404:
        return OutcomeKind.MODEL_UNAVAILABLE
    if code in AUTH_CODES or status in (401, 403):
        return OutcomeKind.AUTH
    if status == 408 or code in TIMEOUT_CODES or status >= 500:
        return OutcomeKind.TRANSIENT
    if status in (400, 422) or code in INPUT_CODES:
        return OutcomeKind.INPUT_ERROR
    # 200 without an image, unknown 4xx, a body that is no envelope at all: another account
    # may well answer properly.
    return OutcomeKind.TRANSIENT


def _message_for(kind: OutcomeKind, status: int, code: int | None, upstream: str) -> str:
    tag = f"code {code}" if code is not None else f"HTTP {status}"
    detail = f": {upstream}" if upstream else ""
    match kind:
        case OutcomeKind.QUOTA_EXHAUSTED:
            return f"The account's daily neuron allocation is used up ({tag})"
        case OutcomeKind.CAPACITY:
            return f"Workers AI capacity temporarily exceeded ({tag})"
        case OutcomeKind.RATE_LIMITED:
            return f"Workers AI rate limit reached ({tag})"
        case OutcomeKind.AUTH:
            return f"Cloudflare rejected the account's token or the account is blocked ({tag})"
        case OutcomeKind.MODEL_UNAVAILABLE if code == TERMS_CODE:
            return (
                f"The account has not accepted this model's terms; accept them once for the "
                f"account to use it ({tag}){detail}"
            )
        case OutcomeKind.MODEL_UNAVAILABLE:
            return f"The model is not available on this account ({tag}){detail}"
        case OutcomeKind.CONFIG_ERROR:
            return f"Workers AI refused how the proxy called the model ({tag}){detail}"
        case OutcomeKind.INPUT_ERROR:
            return f"Workers AI rejected the input ({tag}){detail}"
        case OutcomeKind.TOO_LARGE:
            return f"Workers AI rejected the request as too large ({tag}){detail}"
    if status == 200:
        return "Workers AI answered without an image"
    return f"Workers AI failed ({tag})"


def _param_for(kind: OutcomeKind, upstream: str) -> str | None:
    if kind in (OutcomeKind.INPUT_ERROR, OutcomeKind.TOO_LARGE) and _INPUT_IMAGE.search(upstream):
        return "image"
    return None


def first_error(body: Any) -> tuple[int | None, str]:
    """The first `{code, message}` of a Cloudflare v4 envelope, message trimmed and safe."""
    if not isinstance(body, dict):
        return None, ""
    errors = body.get("errors")
    if not isinstance(errors, list) or not errors:
        return None, ""
    first = errors[0]
    if isinstance(first, str):
        return None, safe_text(first)
    if not isinstance(first, dict):
        return None, ""
    code = first.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    message = first.get("message")
    return code, safe_text(message) if isinstance(message, str) else ""


def safe_text(text: str, limit: int = MAX_UPSTREAM_MESSAGE) -> str:
    """One line, at most `limit` characters."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def classify_exception(exc: BaseException, *, latency: float = 0.0) -> Attempt:
    """A call that got no answer: always transient, with a note on whether it may be billed."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        message, billed = "Could not connect to Workers AI in time", False
    elif isinstance(exc, TimeoutError):
        message, billed = "Workers AI did not answer in time", True
    elif isinstance(exc, aiohttp.ClientConnectorError):
        message, billed = "Could not connect to Workers AI", False
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        message, billed = "Workers AI closed the connection before answering", True
    elif isinstance(exc, aiohttp.ClientError | OSError):
        message, billed = "Connection to Workers AI failed", True
    else:
        message, billed = "Workers AI call failed unexpectedly", True
    return Attempt(
        kind=OutcomeKind.TRANSIENT,
        status=None,
        code=None,
        message=message,
        retry_after=None,
        neurons=None,
        image=None,
        latency=latency,
        maybe_billed=billed,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None or moment.tzinfo is None:
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def parse_neurons(value: str | None) -> float | None:
    """`cf-ai-neurons`, e.g. `172.80`; None when absent or not a finite non-negative number."""
    if value is None:
        return None
    try:
        neurons = float(value.strip())
    except ValueError:
        return None
    if neurons != neurons or neurons < 0 or neurons == float("inf"):
        return None
    return neurons
