"""What every request and response goes through: ids, errors, CORS, standard headers."""

from __future__ import annotations

import logging
import re
import time
import uuid
from functools import lru_cache

from aiohttp import web, web_response
from aiohttp.typedefs import Handler

from ..access import rate_limit_headers
from ..app_keys import RATE_VERDICT, REQUEST_ID, SETTINGS
from ..errors import ModiError
from .errors import ApiError, error_response, from_domain, from_unexpected

log = logging.getLogger(__name__)

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, X-Request-ID"
_CORS_EXPOSE = ("X-Request-ID, X-Timestamp, X-Rate-Limit-Limit, X-Rate-Limit-Remaining, "
                "X-Rate-Limit-Reset, Retry-After")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One error path: everything that goes wrong leaves in the contract's envelope."""
    supplied = request.headers.get("X-Request-ID", "")
    request[REQUEST_ID] = supplied if _SANE_REQUEST_ID.fullmatch(supplied) else str(uuid.uuid4())
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except ModiError as exc:
        return error_response(from_domain(exc))
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 ...
        if exc.status < 400:
            raise
        message = "request body too large" if exc.status == 413 else exc.reason
        return error_response(ApiError(exc.status, message, headers=_allow_header(exc)))
    except Exception as exc:
        error = from_unexpected(exc)
        if error.status == 500:
            log.exception("unexpected error", extra={"request_id": request[REQUEST_ID]})
        else:  # PostgreSQL or Redis out of reach: the service's state, not a bug
            log.warning("storage unavailable: %s", exc,
                        extra={"request_id": request[REQUEST_ID]})
        return error_response(error)


def _allow_header(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the origins in MODI_CORS_ORIGINS only; others get no CORS headers."""
    origin = request.headers.get("Origin")
    if origin is not None and origin not in request.app[SETTINGS].cors_origins:
        origin = None  # not one of ours: no CORS headers
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    if origin is not None and preflight:
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        response.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = await handler(request)
    if origin is not None and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        response.headers["Vary"] = "Origin"
    return response


@lru_cache(maxsize=2)
def _rfc3339(second: int) -> str:
    """Formatted once a second rather than for every response."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


SERVER_NAME = "modi-sync"  # aiohttp's own names its version and Python's
# A request aiohttp cannot parse is answered by aiohttp itself, before any hook of ours
# runs; that answer takes its Server header from this module global (no setting exists).
web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]  # aiohttp: not exported


async def add_standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, the websocket upgrade included."""
    response.headers["X-Request-ID"] = request.get(REQUEST_ID) or str(uuid.uuid4())
    response.headers["X-Timestamp"] = _rfc3339(int(time.time()))
    response.headers["X-Content-Type-Options"] = "nosniff"  # JSON is never run as a script
    response.headers["Server"] = SERVER_NAME
    verdict = request.get(RATE_VERDICT)
    if verdict is not None:
        response.headers.update(rate_limit_headers(verdict))
