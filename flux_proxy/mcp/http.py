"""MCP's streamable HTTP transport at `/mcp`, inside the proxy's own Starlette app.

The route sits behind the same API keys as `/v1/*` (`ApiKeyMiddleware`); a tool call's
services, caller and base URL come from the HTTP request that carried it. The SDK's session
manager runs in the app's lifespan (`running()`).

Stateless mode: every POST stands alone (no session kept in this process's memory), so MCP
works the same behind `serve --workers N` or several replicas, where one client's requests
land on different processes. Progress notifications still reach the caller: they travel on the
POST's own event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.routing import BaseRoute

from flux_proxy.api.caller import caller_of
from flux_proxy.api.middleware import request_id_of
from flux_proxy.api.render import base_url_for
from flux_proxy.mcp.context import ToolContext
from flux_proxy.mcp.server import build_mcp_server
from flux_proxy.settings import Settings

MCP_PATH = "/mcp"


class McpHttp:
    """The `/mcp` route and the lifespan its session manager needs."""

    def __init__(self, settings: Settings) -> None:
        self.server: MCPServer = build_mcp_server(settings, _from_request, local_files=False)
        sub_app = self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            # Reference images travel as data: URLs inside the JSON body.
            max_request_body_size=settings.max_body_bytes,
            transport_security=_transport_security(settings),
        )
        self.routes: list[BaseRoute] = list(sub_app.routes)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The session manager, running in a task of its own for the app's lifetime.

        Its anyio task group must be left in the task that entered it; the app's lifespan may
        be entered and left by different tasks (an async test fixture does), so a dedicated
        task holds it.
        """
        ready, stop = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with self.server.session_manager.run():
                ready.set()
                await stop.wait()

        holder = asyncio.create_task(hold(), name="mcp-session-manager")
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({holder, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if holder.done():
            holder.result()  # it failed to start: raise why
        try:
            yield
        finally:
            stop.set()
            await holder


def _from_request(ctx: Context) -> ToolContext:
    request = ctx.request_context.request
    assert isinstance(request, Request), "MCP over HTTP carries the Starlette request"
    services = request.app.state.services
    return ToolContext(
        services=services,
        caller=caller_of(request.scope),
        request_id=request_id_of(request.scope) or f"mcp_{secrets.token_hex(16)}",
        base_url=base_url_for(request, services.settings),
        local_files=False,  # never read the server's files for a remote caller
    )


def _transport_security(settings: Settings) -> TransportSecuritySettings:
    """With API keys, a request needs the key, which a DNS-rebinding page cannot have; so any
    Host is served (the proxy may sit behind any name). Without keys (`--no-auth`) only
    loopback names and PUBLIC_BASE_URL's host are, as the SDK does for local servers."""
    if not settings.no_auth and settings.master_keys:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if settings.public_base_url:
        public = urlsplit(settings.public_base_url)
        hosts.append(public.netloc)
        origins.append(f"{public.scheme}://{public.netloc}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
