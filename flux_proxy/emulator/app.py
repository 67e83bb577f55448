"""The emulator's Cloudflare-facing routes: `/ai/run/{model}` and `/user/tokens/verify`.

Order of judgement on a run call: read the body (413), global latency, injected fault, token,
model, per-minute rate limit, daily allocation, input validation, then the image and its price.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from flux_proxy.clock import Clock, iso
from flux_proxy.emulator.body import CallBody, read_body
from flux_proxy.emulator.catalogue import add_catalogue_routes
from flux_proxy.emulator.control import add_control_routes
from flux_proxy.emulator.envelope import (
    ALLOCATION_MESSAGE,
    CloudflareError,
    envelope_response,
    success_body,
)
from flux_proxy.emulator.faults import TIMEOUT_DEFAULT_SECONDS, FaultRule
from flux_proxy.emulator.render import (
    RenderKey,
    SourceImage,
    encode_answer,
    other_mime,
    output_mime,
)
from flux_proxy.emulator.state import EMULATOR, Emulator, bearer_token
from flux_proxy.emulator.validate import ImageInfo, inspect_image, validate
from flux_proxy.models import TEXT_TO_IMAGE_RATE_LIMIT, ModelSpec

logger = logging.getLogger("flux_proxy.emulator")

API_PREFIX = "/client/v4"
RATE_LIMIT_PER_MINUTE = TEXT_TO_IMAGE_RATE_LIMIT  # Workers AI text-to-image, per account
MAX_BODY_BYTES = 20 * 1024 * 1024
_LOGGED_TEXT_LIMIT = 20_000  # characters of one field kept in the call log

BANNER = {
    "service": "flux-proxy Workers AI emulator",
    "emulator": True,
    "note": (
        "This is NOT Cloudflare. It is an offline stand-in for development, tests, demos and "
        "benchmarks: images are synthetic and neurons are pretend."
    ),
    "api_base": API_PREFIX,
    "control": "/__emulator/{faults,reset,calls,usage,config,catalogue}",
}


def create_emulator_app(
    accounts: dict[str, str],
    *,
    daily_neurons: float | None = 10_000,
    clock: Clock | None = None,
    latency: float = 0.0,
    rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE,
    max_body_bytes: int = MAX_BODY_BYTES,
    fault_seed: int = 0,
) -> web.Application:
    """An emulator for `accounts` (account id → token). `daily_neurons` 0/None: no limit."""
    emulator = Emulator(
        accounts,
        clock=clock or Clock(),
        daily_neurons=daily_neurons,
        latency=latency,
        rate_limit_per_minute=rate_limit_per_minute,
        max_body_bytes=max_body_bytes,
        fault_seed=fault_seed,
    )
    # The body limit is enforced while reading (for the 3006 answer); aiohttp's own is a backstop.
    app = web.Application(middlewares=[_unexpected_errors], client_max_size=max_body_bytes + 1)
    app[EMULATOR] = emulator
    app.on_response_prepare.append(_label_response)
    app.router.add_get("/", root)
    app.router.add_post(API_PREFIX + "/accounts/{account_id}/ai/run/{model:.+}", run_model)
    app.router.add_get(API_PREFIX + "/user/tokens/verify", verify_token)
    add_catalogue_routes(app, API_PREFIX)
    add_control_routes(app)
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", no_route)
    return app


async def root(request: web.Request) -> web.Response:
    return web.json_response(BANNER)


async def no_route(request: web.Request) -> web.Response:
    return CloudflareError(
        404, 7003, f"Could not route to {request.path}, perhaps your object identifier is invalid?"
    ).response()


async def verify_token(request: web.Request) -> web.Response:
    emulator = request.app[EMULATOR]
    emulator.token_checks += 1
    token = bearer_token(request)
    if not emulator.known_token(token):
        return CloudflareError(401, 1000, "Invalid API Token").response()
    assert token is not None
    token_id = hashlib.sha256(token.encode()).hexdigest()[:32]  # stable, and not the token
    body = success_body({"id": token_id, "status": "active"})
    body["messages"] = [
        {"code": 10000, "message": "This API Token is valid and active", "type": None}
    ]
    return envelope_response(body)


async def run_model(request: web.Request) -> web.StreamResponse:
    emulator = request.app[EMULATOR]
    entry: dict[str, Any] = {
        "time": iso(emulator.clock.now()),
        "account": request.match_info["account_id"],
        "model": unquote(request.match_info["model"]),
        "content_type": request.content_type,
        "fields": {},
        "files": {},
        "status": None,
        "code": None,
        "neurons": None,
        "fault": None,
    }
    emulator.calls.append(entry)
    try:
        response = await _run(request, emulator, entry)
    except CloudflareError as error:
        response = error.response()
        entry["code"] = error.code
    if entry["fault"] != "drop":
        entry["status"] = response.status
    return response


async def _run(request: web.Request, emulator: Emulator, entry: dict[str, Any]):
    account, model_id = entry["account"], entry["model"]
    body = await read_body(request, emulator.max_body_bytes)
    images = {name: inspect_image(upload.data) for name, upload in body.files.items()}
    _log_body(entry, body, images)
    if emulator.latency > 0:
        await asyncio.sleep(emulator.latency)
    spec = emulator.models.get(model_id)
    rule = emulator.faults.pick(account, model_id)
    if rule is not None:
        entry["fault"] = rule.kind
        faulted = await _apply_fault(rule, request, spec)
        if faulted is not None:
            return faulted
    if not emulator.token_matches(account, bearer_token(request)):
        raise CloudflareError(401, 10000, "Authentication error")
    if spec is None:
        raise CloudflareError(400, 5007, f"No such model {model_id} or task")
    retry_after = emulator.limiter.admit(account, *_rate_bucket(emulator, spec))
    if retry_after is not None:
        raise CloudflareError(429, 971, retry_after=retry_after)
    if emulator.ledger.exhausted(account):
        allocation = emulator.ledger.allocation(account) or 0
        message = ALLOCATION_MESSAGE.format(allocation=f"{allocation:,.0f}")
        raise CloudflareError(429, 3036, message)
    params = validate(spec, body, images)
    source = SourceImage(params.image, params.mask, params.strength) if params.image else None
    mime, label = output_mime(spec), None
    if rule is not None and rule.kind == "mislabelled":
        mime, label = other_mime(mime), mime
    key = RenderKey(
        model_id=spec.id,
        prompt=params.prompt,
        seed=params.seed,
        width=params.width,
        height=params.height,
        mime=mime,
        inputs=source.digest() if source else None,
    )
    answer = await emulator.cache.get(key, lambda: encode_answer(spec, key, source, label))
    neurons = spec.estimate_neurons(params.width, params.height, params.steps, params.references)
    # Billed with exactly the figure the header reports; phoenix-1.0 reports none (observed)
    # but is billed all the same.
    emulator.ledger.charge(account, neurons)
    entry["neurons"] = neurons
    headers = {"cf-ai-neurons": f"{neurons:.2f}"} if spec.reports_neurons else {}
    return web.Response(body=answer.body, content_type=answer.content_type, headers=headers)


def _rate_bucket(emulator: Emulator, spec: ModelSpec) -> tuple[str, int | None]:
    """Text-to-image models share the account's per-minute limit (the emulator's setting); a
    model with its own documented limit (img2img: 1,500/min) has a window of its own."""
    if spec.rate_limit_per_minute == TEXT_TO_IMAGE_RATE_LIMIT:
        return "text-to-image", None
    return spec.id, spec.rate_limit_per_minute


def _log_body(entry: dict[str, Any], body: CallBody, images: dict[str, ImageInfo | None]) -> None:
    entry["fields"] = {name: _loggable(value) for name, value in body.fields.items()}
    entry["files"] = {
        name: {
            "bytes": len(upload.data),
            "mime": upload.mime,
            "format": info.format if info else None,
            "width": info.width if info else None,
            "height": info.height if info else None,
            "sha256": hashlib.sha256(upload.data).hexdigest(),
        }
        for name, upload in body.files.items()
        for info in [images.get(name)]
    }


def _loggable(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _LOGGED_TEXT_LIMIT:
        return value[:_LOGGED_TEXT_LIMIT] + f"… ({len(value)} characters)"
    return value


async def _apply_fault(
    rule: FaultRule, request: web.Request, spec: ModelSpec | None
) -> web.StreamResponse | None:
    """The faulty answer, or None when the call should go on normally (after a `timeout`)."""
    if rule.kind == "timeout":
        await asyncio.sleep(rule.latency or TIMEOUT_DEFAULT_SECONDS)
        return None
    if rule.kind == "mislabelled":  # a normal answer, whose type `_run` then swaps
        return None
    if rule.latency > 0:
        await asyncio.sleep(rule.latency)
    return _FAULT_ANSWERS[rule.kind](rule, request, spec)


def _error(rule: FaultRule, request: web.Request, spec: ModelSpec | None) -> web.Response:
    raise CloudflareError(rule.status, rule.error_code, rule.message, retry_after=rule.retry_after)


def _drop(rule: FaultRule, request: web.Request, spec: ModelSpec | None) -> web.Response:
    # Closing the socket before any byte of an answer: the client sees a disconnect.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def _garbage(rule: FaultRule, request: web.Request, spec: ModelSpec | None) -> web.Response:
    # A 200 whose body is not what its Content-Type promises, like an intermediary's error page.
    raw = spec is not None and spec.answer == "raw_bytes"
    content_type = output_mime(spec) if raw and spec else "application/json"
    return web.Response(
        body=b"<html><body>flux-proxy emulator: injected garbage</body></html>",
        content_type=content_type,
    )


def _no_image(rule: FaultRule, request: web.Request, spec: ModelSpec | None) -> web.Response:
    return envelope_response(success_body({}))


_FAULT_ANSWERS: dict[str, Callable[[FaultRule, web.Request, ModelSpec | None], web.Response]] = {
    "error": _error,
    "drop": _drop,
    "garbage": _garbage,
    "no_image": _no_image,
}


async def _label_response(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-emulator"] = "flux-proxy"
    response.headers.setdefault("cf-ray", f"{secrets.token_hex(8)}-EMU")


_HTTP_ERROR_CODES = {404: 7003, 405: 7001, 413: 3006}


@web.middleware
async def _unexpected_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except CloudflareError as error:  # an error answer raised by a handler
        return error.response()
    except web.HTTPException as error:
        if request.path.startswith(API_PREFIX) and error.status >= 400:
            code = _HTTP_ERROR_CODES.get(error.status, 7000)
            return CloudflareError(error.status, code, error.reason).response()
        raise
    except Exception:
        logger.exception("emulator_error path=%s", request.path)
        return CloudflareError(500, 3043, "Internal server error").response()
