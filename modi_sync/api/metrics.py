"""``GET /metrics`` (docs/operations.md, "Metrics"), and what every request adds to them.

Metrics show the traffic's shape, so they are kept off the public port: by default
they are served on a listener of their own (``MODI_METRICS_LISTEN``, 127.0.0.1:9464).
On the public port ``/metrics`` exists only with ``MODI_METRICS_TOKEN`` set, and then
asks for it as a Bearer token; without one it is a 404 like any unknown path.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from ..app_keys import PUBLISHER, REGISTRY, SETTINGS, STORAGE
from ..config import listen_address
from ..metrics import AUTH_FAILURES, CONTENT_TYPE, HTTP_SECONDS, RATE_LIMITED, exposition
from .errors import ApiError

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OCR_QUERY_SECONDS = 1.0  # a scrape answers without the queue depth rather than wait


@routes.get("/metrics")
async def public_metrics(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].metrics_token
    if token is None:
        raise web.HTTPNotFound()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "metrics need MODI_METRICS_TOKEN as a Bearer token",
                       headers={"WWW-Authenticate": "Bearer"})
    return await _metrics(request.app)


async def _metrics(app: web.Application) -> web.Response:
    registry = app[REGISTRY]
    try:
        ocr_jobs: dict[str, int] | None = await asyncio.wait_for(
            app[STORAGE].images.open_jobs(), OCR_QUERY_SECONDS)
    except Exception as exc:  # PostgreSQL away or slow: the rest is still worth reading
        log.warning("metrics: reading the OCR queue failed: %r", exc)
        ocr_jobs = None
    body = exposition((conn.waiting_bytes for conn in registry.connections()),
                      len(registry.rooms), app[PUBLISHER].backlog, ocr_jobs)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency by route template (never the raw path: one label per route, whatever a
    client asks for), and the 401s and 429s by route."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # redirects; errors leave error_middleware as answers
        _count(request, exc.status, started)
        raise
    _count(request, response.status, started)
    return response


def _count(request: web.Request, status: int, started: float) -> None:
    if status == 101:  # a websocket: its time is the socket's life, not a latency
        return
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "other"
    HTTP_SECONDS.labels(route, method, str(status)).observe(time.perf_counter() - started)
    if status == 401:
        AUTH_FAILURES.labels(route).inc()
    elif status == 429:
        RATE_LIMITED.labels(route).inc()


async def metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: ``/metrics`` alone on ``MODI_METRICS_LISTEN``. A port already
    taken (a second instance on one host, say) is logged and serving goes on: users
    are not refused for want of metrics."""
    settings = app[SETTINGS]
    if settings.metrics_listen == "off":
        yield
        return
    host, port = listen_address(settings.metrics_listen, "MODI_METRICS_LISTEN")

    async def handler(request: web.Request) -> web.Response:
        return await _metrics(app)

    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", handler)
    runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.warning("metrics not served on %s: %s", settings.metrics_listen, exc)
    else:
        log.info("metrics on http://%s/metrics", settings.metrics_listen)
    try:
        yield
    finally:
        await runner.cleanup()
