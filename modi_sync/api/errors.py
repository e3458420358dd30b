"""The contract's error envelope, request ids and timestamps, for every response."""

from __future__ import annotations

import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "VALIDATION_ERROR",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class ApiError(Exception):
    """An error meant for the client: becomes ``{"error": {...}}`` with its status."""

    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = _CODES.get(status, "VALIDATION_ERROR" if status < 500 else "INTERNAL")
        self.message = message
        self.details = details

    @classmethod
    def validation(cls, field: str, reason: str) -> ApiError:
        return cls(400, f"{field}: {reason}", {"field": field, "reason": reason})

    @classmethod
    def unauthorized(cls, message: str = "authentication required") -> ApiError:
        return cls(401, message)

    @classmethod
    def conflict(cls, message: str) -> ApiError:
        return cls(409, message)


def error_response(error: ApiError) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return web.Response(
        status=error.status, body=orjson.dumps(body), content_type="application/json"
    )


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"data": data}), content_type="application/json"
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    supplied = request.headers.get("X-Request-ID", "")
    request[REQUEST_ID] = supplied if _SANE_REQUEST_ID.fullmatch(supplied) else str(uuid.uuid4())
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(ApiError(exc.status, exc.reason))
    except Exception:
        log.exception("unexpected error (request %s)", request[REQUEST_ID])
        return error_response(ApiError(500, "internal error"))


async def add_standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, the websocket upgrade included."""
    request_id = request.get(REQUEST_ID) or str(uuid.uuid4())
    response.headers["X-Request-ID"] = request_id
    response.headers["X-Timestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
