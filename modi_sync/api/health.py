"""``/health`` and ``/ready`` (docs/api.md, "Operations")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from aiohttp import web

from ..app_keys import POOL, REDIS
from .errors import ApiError, json_response

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    checks = {"postgres": _check(request.app[POOL].fetchval("SELECT 1")),
              "redis": _check(request.app[REDIS].ping())}
    results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    if not all(results.values()):
        raise ApiError(503, "not ready", {k: "ok" if v else "down" for k, v in results.items()})
    return json_response({"postgres": "ok", "redis": "ok"})


async def _check(probe: Awaitable[object]) -> bool:
    try:
        await asyncio.wait_for(probe, timeout=2.0)
    except Exception:
        return False
    return True
