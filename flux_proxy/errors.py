"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure a caller can see is an `ApiError`. Nothing else (no upstream body, no stack
trace, no token) reaches the response.
"""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """A failure with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# The openai SDKs retry 408, 409, 429 and 5xx unless told otherwise; this tells them.
NO_RETRY = {"x-should-retry": "false"}


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def invalid(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    """A 400 for a request the proxy will not send upstream."""
    return ApiError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, param=param, code="request_too_large")
