"""Route handlers. Each is short: read → validate (`parse`) → pool → render.

Shared objects (settings, pool, stores, metrics) live in one `Services` value that the app's
lifespan puts on `app.state.services`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from flux_proxy import __version__
from flux_proxy.api import usage as usage_api
from flux_proxy.api.batches import batch_routes
from flux_proxy.api.body import read_request
from flux_proxy.api.caller import caller_of
from flux_proxy.api.disconnect import unless_disconnected
from flux_proxy.api.files import file_routes
from flux_proxy.api.generate import finish_all
from flux_proxy.api.jobs import job_routes, submit_image_job, wants_async
from flux_proxy.api.middleware import note, optional_caller
from flux_proxy.api.model_lookup import lookup_model
from flux_proxy.api.parse import build_image_request
from flux_proxy.api.pool_seam import ImagePool
from flux_proxy.api.render import FILES_PATH, base_url_for, images_body, json_response
from flux_proxy.api.stream import image_stream
from flux_proxy.api.variations import VARIATIONS_PATH, build_variation_request
from flux_proxy.api.work_options import work_headers, work_options
from flux_proxy.clock import Clock, iso, next_utc_midnight
from flux_proxy.errors import ApiError
from flux_proxy.image_store import ImageStore
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics
from flux_proxy.models import MODELS, ModelSpec, find_model
from flux_proxy.pool import AccountPool
from flux_proxy.settings import Settings
from flux_proxy.store.base import StateStore

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
# One fixed date (FLUX.2's release, 2025-11-25) so `created` is stable and in seconds.
MODELS_CREATED = 1_764_028_800


@dataclass
class Services:
    settings: Settings
    clock: Clock
    store: StateStore
    pool: ImagePool
    images: ImageStore
    metrics: Metrics
    jobs: Any = None  # JobService (work/jobs.py), started by the app's lifespan
    work: Any = None  # flux_proxy.work.ImageWork: the one path from every entry point to the pool
    keys: Any = None  # KeyRing: who may call (flux_proxy/keys/ring.py)
    quota: Any = None  # KeyQuota: per-key quotas and usage rows (flux_proxy/keys/quota.py)
    batches: Any = None  # BatchParts (work/batch_service.py): the Files and Batch services


def services(request: Request) -> Services:
    return request.app.state.services


# --- images --------------------------------------------------------


async def generations(request: Request) -> Response:
    return await _images(request, edit=False)


async def edits(request: Request) -> Response:
    return await _images(request, edit=True)


async def variations(request: Request) -> Response:
    return await _images(request, edit=True, build=build_variation_request)


async def _images(request: Request, *, edit: bool, build=build_image_request) -> Response:
    svc = services(request)
    settings = svc.settings
    request_id = request.scope["state"]["request_id"]
    raw = await read_request(
        request,
        max_body_bytes=settings.max_body_bytes,
        max_field_bytes=max(1024 * 1024, 4 * settings.max_prompt_chars),
        body_timeout=settings.body_read_timeout,
    )
    image_request = await build(raw, settings, edit=edit)
    note(request.scope, model=image_request.job.model.short_name, n=image_request.n)
    if settings.log_prompts:
        log_event("prompt", request_id=request_id, prompt=image_request.prompt_text)
    options = work_options(request)
    if wants_async(request):
        return await submit_image_job(request, raw, image_request, options, edit=edit, build=build)

    if image_request.stream:
        # A 200 event stream once the work's first look is in (refusals before it, such as a
        # reused Idempotency-Key, are still plain errors); later failures are error events.
        note(request.scope, stream=True)
        # The key's model list and quota, checked before any work starts; the work layer
        # holds the quota itself, before its first look (so a race past this is a 429 too).
        await svc.quota.check(caller_of(request.scope), image_request)
        return await image_stream(
            svc,
            image_request,
            edit=edit,
            request_id=request_id,
            base_url=base_url_for(request, settings),
            scope=request.scope,
            options=options,
        )

    # A caller who hangs up stops costing what was not sent yet; sent calls finish and their
    # result is kept for a retry (see flux_proxy/work/).
    result = await unless_disconnected(
        request, svc.work.produce(image_request, request_id=request_id, **options)
    )
    outcome = await finish_all(result, image_request)
    note(
        request.scope,
        account=outcome.images[0][1].image.account,
        cache=result.cache,
        replayed=result.replayed or None,
    )
    body = await images_body(
        outcome,
        image_request,
        created=result.created,
        result_id=result.id,
        image_store=svc.images,
        # Only URL entries need the base; working it out reads several headers.
        base_url=""
        if image_request.response_format == "b64_json"
        else base_url_for(request, settings),
    )
    svc.metrics.child(
        svc.metrics.images,
        image_request.job.model.short_name,
        image_request.response_format or "both",
    ).inc(len(outcome.images))
    return json_response(body, headers=work_headers(result))


async def image_file(request: Request) -> Response:
    svc = services(request)
    found = await svc.images.get(request.path_params["name"])
    if found is None and hasattr(request.app.state, "batches"):  # a batch answer's image
        found = await request.app.state.batches.images.get(request.path_params["name"])
    if found is None:
        raise ApiError(404, "no such image, or it has expired", code="image_not_found")
    data, content_type = found
    return Response(
        data,
        media_type=content_type,
        headers={
            "cache-control": f"private, max-age={svc.settings.image_ttl_seconds}",
            "x-content-type-options": "nosniff",
        },
    )


# --- models --------------------------------------------------------


def model_entry(spec: ModelSpec) -> dict:
    steps = spec.steps_range
    size = spec.size_range
    return {
        "id": spec.id,
        "object": "model",
        "created": MODELS_CREATED,
        "owned_by": spec.owned_by,
        "short_name": spec.short_name,
        "description": spec.description,
        "takes_references": spec.takes_references,
        "max_references": spec.max_references,
        "fixed_steps": spec.fixed_steps,
        "steps_range": [steps.minimum, steps.maximum] if steps else None,
        "default_steps": spec.default_steps,
        "size_range": [size.minimum, size.maximum] if size else None,
        "default_width": spec.default_width,
        "default_height": spec.default_height,
        "takes_seed": spec.takes_seed,
        "takes_guidance": spec.guidance_range is not None,
        "takes_negative_prompt": spec.takes_negative_prompt,
        "typical_seconds": spec.typical_seconds,
        # img2img / inpainting: references[0] is the image to change, the mask says where
        "takes_mask": spec.takes_mask,
        "takes_strength": spec.takes_strength,
        "requires_reference": spec.requires_reference,
        "requires_mask": spec.requires_mask,
    }


async def list_models(request: Request) -> Response:
    default = find_model(services(request).settings.default_model)
    # A key limited to some models is shown those only.
    caller = caller_of(request.scope)
    usable = [spec for spec in MODELS if caller.may_use(spec.id)]
    data = [model_entry(spec) | {"default": spec is default} for spec in usable]
    return json_response({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    settings = services(request).settings
    spec = lookup_model(request.path_params["model"], settings)
    # A key limited to some models is not shown the others here either, as in the list.
    if spec is None or not caller_of(request.scope).may_use(spec.id):
        raise ApiError(404, "no such model", param="model", code="model_not_found")
    return json_response(model_entry(spec))


# --- health and metrics --------------------------------------------------------


async def health(request: Request) -> Response:
    svc = services(request)
    settings = svc.settings
    accounts = await svc.pool.snapshot()
    store = await svc.store.status()
    status, reason = _availability(accounts)
    default = find_model(settings.default_model, settings.model_aliases)
    body = {
        "status": status,
        "reason": reason,
        "version": __version__,
        "mode": "emulator" if settings.emulator else "cloudflare",
        "model": default.id if default else settings.default_model,
        "total_accounts": len(settings.accounts),
        "accounts_configured": [f"Account {a.number}" for a in settings.accounts],
        **health_summary(accounts, svc.clock.now()),
        "accounts": accounts,
        "store": store,
    }
    if svc.work is not None:
        body["cache"] = await svc.work.cache.stats()
    if svc.jobs is not None:
        body["jobs"] = await svc.jobs.stats()
    # Per-account detail (masked ids, budgets, errors) and the store's whereabouts are for
    # admin keys; anyone else gets the summary: status, counts per state, the next reset.
    caller = optional_caller(request.scope, svc.keys, enabled=not settings.no_auth)
    if caller is None or not caller.is_admin:
        del body["accounts"]
        body["store"] = {k: store[k] for k in ("backend", "ok", "serving") if k in store}
    return json_response(body, 200 if status == "ok" else 503)


def health_summary(accounts: list[dict], now: float) -> dict:
    counts = dict.fromkeys(("available", "cooling", "parked", "disabled"), 0)
    for entry in accounts:
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    serving = [e for e in accounts if e["state"] != "disabled"]
    remaining = [e["neurons_remaining_today"] for e in serving]
    return {
        "counts": counts,
        "neurons_remaining_today": (
            None if any(r is None for r in remaining) else round(sum(remaining), 2)
        ),
        "next_reset": iso(next_utc_midnight(now)),
    }


def _availability(accounts: list[dict]) -> tuple[str, str | None]:
    if not accounts:
        return "unavailable", "no accounts configured: set CF_API_TOKEN_1 and ACCOUNT_1"
    if any(AccountPool.is_usable_now(entry) for entry in accounts):
        return "ok", None
    waiting = [e for e in accounts if e["state"] in ("parked", "cooling", "available")]
    if waiting:
        returns = sorted(e["until"] or e["next_reset"] for e in waiting)
        return "degraded", f"no account can serve now; the first returns at {returns[0]}"
    return "unavailable", "every account is disabled; check their tokens"


async def health_live(request: Request) -> Response:
    return json_response({"status": "alive"})


async def health_ready(request: Request) -> Response:
    """Whether this replica should get traffic. Spent or cooling accounts do not make it
    unready: they are the pool's, shared by every replica, so a load balancer taking them all
    out would only turn the 429 with its Retry-After into its own 503, and hide the job
    results, batches, files and usage callers poll meanwhile (for hours, until 00:00 UTC).
    No accounts, every token refused, or a store it can neither use nor stand in for do."""
    svc = services(request)
    accounts = await svc.pool.snapshot()
    store = await svc.store.status()
    status, reason = _availability(accounts)
    if status != "unavailable" and not store.get("ok") and not store.get("serving"):
        status, reason = "unavailable", f"state store not ok: {store.get('detail')}"
    ready = status != "unavailable"
    return json_response(
        {"status": "ready" if ready else "not_ready", "reason": reason}, 200 if ready else 503
    )


async def metrics(request: Request) -> Response:
    svc = services(request)
    if svc.settings.metrics_auth == "admin":
        caller = optional_caller(request.scope, svc.keys, enabled=not svc.settings.no_auth)
        if caller is None:
            raise ApiError(
                401,
                "METRICS_AUTH=admin: send 'Authorization: Bearer <admin key>'",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
        if not caller.is_admin:
            raise ApiError(403, "/metrics needs an admin key", code="admin_key_required")
    # Reading the pool refreshes the account-state gauges from the (possibly shared) store,
    # so a freshly restarted replica shows what it inherited before its first request.
    await services(request).pool.snapshot()
    return Response(
        services(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


# --- the web page --------------------------------------------------------


async def index(request: Request) -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise ApiError(404, "the web page is not installed", code="not_found")
    return FileResponse(page, headers={"cache-control": "no-cache"})


def routes() -> list[BaseRoute]:
    # Starlette tries routes in order: the image routes, the hot path, come first.
    return [
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route(VARIATIONS_PATH, variations, methods=["POST"]),
        Route(FILES_PATH + "{name}", image_file, methods=["GET", "HEAD"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        *file_routes(),
        *batch_routes(),
        *usage_api.routes(),
        Route("/health", health, methods=["GET"]),
        Route("/health/live", health_live, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"),
        *job_routes(),
    ]
