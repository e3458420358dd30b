"""The contract's error envelope and success body."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from storage.outage import is_outage

from ..errors import (
    Conflict,
    Forbidden,
    Invalid,
    ModiError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unsupported,
)

CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """An error meant for the client: becomes ``{"error": {...}}`` with its status."""

    def __init__(
        self, status: int, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        # Statuses outside the contract's list (405, say) take the nearest class's code.
        self.code = CODES.get(status, "VALIDATION_ERROR" if status < 500 else "INTERNAL")
        self.message = message
        self.details = details
        self.headers = headers or {}

    @classmethod
    def validation(cls, field: str, reason: str) -> ApiError:
        return cls(400, f"{field}: {reason}", {"field": field, "reason": reason})

    @classmethod
    def unauthorized(cls, message: str = "authentication required") -> ApiError:
        return cls(401, message)



# Each domain error's status: the one place where they meet HTTP.
_STATUS: dict[type[ModiError], int] = {
    Unauthenticated: 401,
    RateLimited: 429,
    Invalid: 400,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unsupported: 415,
    Unavailable: 503,
}


def from_domain(error: ModiError) -> ApiError:
    """The envelope of a domain error (modi_sync/errors.py)."""
    status = next(s for kind, s in _STATUS.items() if isinstance(error, kind))
    if isinstance(error, Invalid):
        return ApiError.validation(error.field, error.reason)
    if isinstance(error, RateLimited):
        return ApiError(429, str(error), {"retry_after": error.retry_after},
                        headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, Unavailable):
        return unavailable(str(error))
    return ApiError(status, str(error))


# How soon a client may try again after a 503: PostgreSQL restarts in about a second.
UNAVAILABLE_RETRY_AFTER = 1


def unavailable(message: str = "storage unavailable, try again") -> ApiError:
    return ApiError(503, message, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def outage_unavailable(handler: Handler) -> Handler:
    """The route answers 503 UNAVAILABLE while PostgreSQL or Redis is out of reach.

    For the routes that cannot do without Redis (logins: their limits, backoff and
    tokens all live there), so that clients are told to come back, not of a bug.
    """

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:
            if is_outage(exc):
                raise unavailable() from exc
            raise

    return guarded


def from_unexpected(error: Exception) -> ApiError:
    """The envelope of an exception nothing else mapped: 503 when PostgreSQL or Redis is
    out of reach (a retry may work, and it is not a bug), else 500."""
    return unavailable() if is_outage(error) else ApiError(500, "internal error")


def error_response(error: ApiError) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return web.Response(
        status=error.status, body=orjson.dumps(body), content_type="application/json",
        headers=error.headers,
    )


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"data": data}), content_type="application/json"
    )
