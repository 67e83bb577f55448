"""Two pure-ASGI middlewares: the request context (id, one log line, metrics, last-resort
error handling) and the API-key check on `/v1/*`.

Pure ASGI rather than `BaseHTTPMiddleware`, so streamed bodies pass through untouched.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux_proxy.api.caller import ANONYMOUS, Caller
from flux_proxy.api.render import FILES_PATH, error_response, json_response
from flux_proxy.errors import ApiError
from flux_proxy.keys.ring import KeyRing
from flux_proxy.logs import log_event
from flux_proxy.metrics import Metrics

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SLASHES = re.compile(r"//+")


def note(scope: Scope, **fields: object) -> None:
    """Add fields (model, n, account, ...) to this request's log line."""
    scope.setdefault("state", {}).setdefault("log_fields", {}).update(fields)


def request_id_of(scope: Scope) -> str:
    return scope.get("state", {}).get("request_id", "")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestContextMiddleware:
    """Gives every response an `x-request-id`, logs one line per request, counts it, and turns
    any exception that escaped the handlers into an OpenAI-shaped 500 without a trace."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "//" in scope["path"]:
            # Clients that join `base_url + "/images/..."` as text (Open WebUI) ask for
            # "/v1//images/..." when the base URL was entered with a trailing slash.
            scope = {**scope, "path": _SLASHES.sub("/", scope["path"])}
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming
            if incoming and _SANE_REQUEST_ID.match(incoming)
            else f"req_{secrets.token_hex(16)}"
        )
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            status = status or 499  # nginx's "client closed request"; nobody to answer
        except Exception as exc:
            log_event(
                "unhandled_error",
                logging.ERROR,
                request_id=request_id,
                path=scope.get("path"),
                error=type(exc).__name__,
            )
            if started:
                return  # headers are gone; the connection just ends
            error = ApiError(
                500,
                f"internal error; quote request id {request_id} when reporting it",
                code="internal_error",
                headers={"x-should-retry": "false"},
            )
            await error_response(error)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            latency = time.perf_counter() - start
            route = scope.get("route")
            route_label = getattr(route, "path", None) or "unmatched"
            metrics = self.metrics
            metrics.child(metrics.http_requests, route_label, str(status)).inc()
            metrics.child(metrics.http_latency, route_label).observe(latency)
            log_event(
                "request",
                request_id=request_id,
                method=scope.get("method"),
                route=route_label,
                status=status,
                latency_ms=round(latency * 1000, 1),
                **state.get("log_fields", {}),
            )


def _is_mcp(path: str) -> bool:
    # MCP's streamable HTTP endpoint (flux_proxy/mcp/http.py) spends neurons like /v1/*.
    return path == "/mcp" or path.startswith("/mcp/")


def _mcp_error_response(error: ApiError) -> Response:
    """A refusal on `/mcp` as a JSON-RPC error (the OpenAI error its data): MCP clients show
    its message, where a body of another shape becomes "Server returned an error response"."""
    body = {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": INVALID_REQUEST, "message": error.message, "data": error.body()},
    }
    return json_response(body, error.status, error.headers)


INVALID_REQUEST = -32600  # JSON-RPC's, as the MCP SDK's transport uses for its own refusals


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` on `/v1/*` and `/mcp`, except the image files (their
    random names are the credential). The scheme is case-insensitive; the key is looked up in
    the `KeyRing` (`API_MASTER_KEY` keys and `API_KEYS_FILE`), which compares its SHA-256 with
    every key's in constant time, with no early exit. The matching key's `Caller` goes on
    `scope["state"]["caller"]` (see `api/caller.py`) and its name on the request's log line."""

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str] | None = None,
        enabled: bool = True,
        keyring: KeyRing | None = None,
    ) -> None:
        self.app = app
        self.keyring = keyring if keyring is not None else KeyRing(list(keys or []))
        self.enabled = enabled

    def _needs_key(self, scope: Scope) -> bool:
        path: str = scope.get("path", "")
        return (
            self.enabled
            and scope["type"] == "http"
            and (path.startswith("/v1/") or path == "/v1" or _is_mcp(path))
            and not path.startswith(FILES_PATH)
        )

    def _caller(self, header: str | None) -> Caller | None:
        """The caller whose key this header presents, or None."""
        return bearer_caller(self.keyring, header)

    def _authorized(self, header: str | None) -> bool:
        return self._caller(header) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._needs_key(scope):
            await self.app(scope, receive, send)
            return
        caller = self._caller(_header(scope, b"authorization"))
        if caller is None:
            error = ApiError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"www-authenticate": "Bearer"},
            )
            note(scope, code=error.code)
            respond = _mcp_error_response if _is_mcp(scope["path"]) else error_response
            await respond(error)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        note(scope, key_name=caller.name)
        await self.app(scope, receive, send)


def bearer_caller(keyring: KeyRing, header: str | None) -> Caller | None:
    """The caller an `Authorization: Bearer <key>` header presents, or None."""
    if not header:
        return None
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return keyring.caller_for(presented.strip())


def optional_caller(scope: Scope, keyring: KeyRing | None, enabled: bool) -> Caller | None:
    """For routes open to anyone that show more to admins (`/health`, `/metrics`): the
    caller if a valid key came with the request, the anonymous admin with --no-auth."""
    if not enabled:
        return ANONYMOUS
    if keyring is None:
        return None
    return bearer_caller(keyring, _header(scope, b"authorization"))
