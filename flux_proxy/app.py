"""The Starlette app, assembled by composition: routes, middleware, lifespan.

The lifespan owns the long-lived objects: the state store, the one shared Workers AI client
session, and the account pool. Objects passed in by the caller (tests, benchmarks) are used
as given and left for the caller to open and close.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from flux_proxy.api.image_jobs import start_jobs
from flux_proxy.api.middleware import ApiKeyMiddleware, RequestContextMiddleware, note
from flux_proxy.api.openapi import openapi_route
from flux_proxy.api.render import error_response
from flux_proxy.api.routes import Services, routes
from flux_proxy.clock import Clock
from flux_proxy.errors import ApiError
from flux_proxy.image_store import ImageStore
from flux_proxy.keys.quota import KeyQuota
from flux_proxy.keys.ring import KeyRing
from flux_proxy.logs import configure_logging, log_event
from flux_proxy.mcp.http import McpHttp
from flux_proxy.metrics import Metrics
from flux_proxy.pool import AccountPool
from flux_proxy.settings import Settings, load_settings
from flux_proxy.shutdown import ShutdownSignal
from flux_proxy.store.base import StateStore, StoreUnavailable
from flux_proxy.store.factory import open_store
from flux_proxy.upstream.client import WorkersAIClient
from flux_proxy.work import ImageWork
from flux_proxy.work.batch_service import open_batches


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: StateStore | None = None,
    client: Any = None,
    pool: Any = None,
    embedded_emulator: bool = False,
    mcp_http: bool = True,
) -> Starlette:
    """Build the proxy. `embedded_emulator=True` (`serve --emulator`) starts the Workers AI
    emulator in the same event loop on a free port and points the proxy at it.
    `mcp_http=False` leaves out `/mcp` (`flux-proxy mcp` serves MCP over stdio instead)."""
    clock = clock or Clock()
    metrics = Metrics()
    mcp = McpHttp(settings) if mcp_http else None

    keyring = KeyRing.from_settings(settings)  # a bad API_KEYS_FILE stops start-up here

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            effective = settings
            if embedded_emulator:
                effective = await _start_emulator(settings, stack)
            state = store
            if state is None:
                state = open_store(effective, clock)
                await state.open()
                stack.push_async_callback(state.close)
            upstream = client
            if upstream is None and pool is None:
                upstream = WorkersAIClient(
                    effective.cf_api_base_url,
                    connect_timeout=effective.upstream_connect_timeout,
                    read_timeout=effective.upstream_read_timeout,
                )
                await upstream.start()
                stack.push_async_callback(upstream.close)
            account_pool = pool or AccountPool(effective, upstream, state, clock, metrics)
            quota = KeyQuota(state, clock, effective, metrics, keys=keyring)
            work = ImageWork(effective, account_pool, state, clock, metrics, quota=quota)
            # Work still running after the requests' grace period is given up at shutdown.
            stack.push_async_callback(work.close)
            app.state.services = Services(
                settings=effective,
                clock=clock,
                store=state,
                pool=account_pool,
                images=ImageStore(state, effective.image_ttl_seconds),
                metrics=metrics,
                work=work,
                keys=keyring,
                quota=quota,
            )
            # Files and Batch API (issue 10): its stores, and this replica's batch runner.
            app.state.batches = open_batches(app.state.services)
            app.state.services.batches = app.state.batches
            app.state.batches.runner.start()
            stack.push_async_callback(app.state.batches.runner.stop)
            shutdown = ShutdownSignal()
            app.state.services.jobs = await start_jobs(app.state.services, stack, shutdown)
            stack.enter_context(shutdown.watching())
            await stack.enter_async_context(keyring.watching())
            log_event(
                "started",
                mode="emulator" if effective.emulator else "cloudflare",
                accounts=len(effective.accounts),
                store=state.name,
                auth="off" if effective.no_auth else "on",
            )
            if mcp is not None:
                await stack.enter_async_context(mcp.running())
            yield
            log_event("stopping")

    middleware = [Middleware(RequestContextMiddleware, metrics=metrics)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                # Any request header: the openai SDKs add their own x-stainless-* set (and new
                # ones with new versions), and the key is a bearer token, never a cookie, so
                # the origin list is what guards the API.
                allow_headers=["*"],
                expose_headers=[
                    "x-request-id",
                    "retry-after",
                    "x-should-retry",
                    "x-flux-cache",
                    "x-flux-replayed",
                    "location",
                    "preference-applied",
                ],
                max_age=600,
            )
        )
    middleware.append(Middleware(ApiKeyMiddleware, keyring=keyring, enabled=not settings.no_auth))
    return Starlette(
        routes=[*routes(), openapi_route(), *(mcp.routes if mcp else ())],
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            StoreUnavailable: _store_unavailable,
        },
    )


def app_from_environment() -> Starlette:
    """The proxy built from the environment alone: the factory each `serve --workers N`
    process calls (`flux_proxy.app:app_from_environment`, uvicorn `--factory`)."""
    settings = load_settings()  # a bad setting exits with the CLI's clean message
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)


async def _start_emulator(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    # Imported here: the emulator is a development tool, not needed on the production path.
    from flux_proxy.emulator import demo_account_configs, start_emulator

    runner, base_url = await start_emulator("127.0.0.1", 0)
    stack.push_async_callback(runner.cleanup)
    update: dict[str, Any] = {
        "cf_api_base_url": base_url,
        "accounts": demo_account_configs(),
        "emulator": True,
    }
    if settings.state_backend == "auto":
        update["state_backend"] = "memory"  # the emulator's own usage restarts with it
    log_event("emulator_started", base_url=base_url)
    return settings.model_copy(update=update)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    note(request.scope, code=exc.code or exc.type)  # which 429, which 400, on the log line
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "no such route", 405: "method not allowed on this route"}
    error = ApiError(
        exc.status_code,
        messages.get(exc.status_code, str(exc.detail)),
        code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code),
        headers=exc.headers,
    )
    return error_response(error)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    # Batches and files live only in the shared state; while it is away, say so (retryable).
    error = ApiError(
        503,
        "the shared state store is unreachable; try again shortly",
        code="state_store_unavailable",
        headers={"retry-after": "5"},
    )
    return error_response(error)
