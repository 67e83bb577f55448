"""Cloudflare's v4 response envelope, and the one exception that carries an error answer.

Every answer the emulator gives on `/client/v4` has the shape the real API uses, so the proxy's
client and classifier meet exactly what they will meet in production.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

# The texts Cloudflare uses for the codes the emulator produces on its own or in a fault rule
# without a message of its own: the Workers AI errors page's wording where it has the code
# (placeholders such as `${model}` filled generically), observed texts for the rest.
ALLOCATION_MESSAGE = (
    "you have used up your daily free allocation of {allocation} neurons, please upgrade to "
    "Cloudflare's Workers Paid plan if you would like to continue usage."
)
DEFAULT_MESSAGES: dict[int, str] = {
    971: "Please wait and consider throttling your request speed",
    1000: "Invalid API Token",
    3003: "Request is missing headers or body: body",
    3006: "Request is too large",
    3007: "Request timeout",
    3008: "Request was aborted",
    3023: "Service unavailable for account",
    3036: ALLOCATION_MESSAGE.format(allocation="10,000"),
    3039: "Finetune is missing required files (model.safetensors and config.json)",
    3040: "Capacity temporarily exceeded, please try again.",
    3041: "The account is not allowed to access this model",
    3042: "The model name is invalid",
    5004: "Invalid data type for base64 input: object",
    5005: "The model does not support LoRa inference",
    5007: "No such model or task",
    5016: "User has not agreed to the model terms",
    5018: "The account is not allowed to access this model",
    5019: "Request trying to use deprecated SDK version",
    5035: "This model requires a Workers Paid plan.",
    7000: "No route for that URI",
    9109: "Invalid access token",
    10000: "Authentication error",
}


class CloudflareError(Exception):
    """An error answer: HTTP status, Cloudflare code and message, optional Retry-After."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message or DEFAULT_MESSAGES.get(code, "Emulated error")
        self.retry_after = retry_after
        super().__init__(f"{status} {code}: {self.message}")

    def response(self) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(0, math.ceil(self.retry_after)))
        return envelope_response(
            {
                "success": False,
                "errors": [{"code": self.code, "message": self.message}],
                "messages": [],
                "result": None,
            },
            status=self.status,
            headers=headers,
        )


def bad_input(detail: str) -> CloudflareError:
    """Schema validation failure, as Workers AI words it."""
    return CloudflareError(400, 5006, f"AiError: Bad input: {detail}")


def success_body(result: Mapping[str, Any]) -> dict[str, Any]:
    return {"result": dict(result), "success": True, "errors": [], "messages": []}


def envelope_response(
    body: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(),
        status=status,
        content_type="application/json",
        headers=dict(headers or {}),
    )
