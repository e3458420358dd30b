"""The aiohttp application: resources in ``cleanup_ctx``, routes, middleware.

Start and stop are symmetrical: storage (runtime.py: embedded or external services,
the pool, Redis, migrations), then the sync engine and the services on top of it;
stopped in the reverse order, after every socket is closed and every queued update is
stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from storage.food_cache import FoodCache
from storage.session_events import RESTORED, RESTRICTED, SessionEvent

from .accounts import Accounts
from .api import (
    auth,
    documents,
    export,
    food_logs,
    foods,
    health,
    images,
    metrics,
    openapi,
    users,
    webapp,
)
from .api.middleware import add_standard_headers, cors_middleware, error_middleware
from .app_keys import (
    ACCESS_TOKENS,
    ACCOUNTS,
    DEVICE_TOKENS,
    DOCUMENTS,
    ENGINE,
    FOODS,
    IMAGES,
    LOGIN_FAILURES,
    POOL,
    PUBLISHER,
    RATE_LIMITER,
    REDIS,
    REFRESH_TOKENS,
    REGISTRY,
    SESSION_STATES,
    SETTINGS,
    STORAGE,
    UPDATE_LOG,
    USERS,
    WRITER,
)
from .config import Settings
from .contract import DOC_NAME, CloseCode
from .device_tokens import DeviceTokens
from .documents import Documents
from .foods import Foods
from .images import Images
from .popular import popular_food_ids, scheduled_popular
from .retention import scheduled_retention
from .revocations import SessionStates
from .runtime import open_storage
from .sync.engine import SyncEngine
from .sync.handler import sync_endpoint
from .tokens import AccessTokens, load_or_create_secret


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Before any service starts: a secret that cannot be trusted stops the start.
    secret = load_or_create_secret(settings.jwt_secret, settings.data_dir)
    previous = settings.jwt_previous_secrets
    async with open_storage(settings) as storage:
        app[STORAGE] = storage
        app[POOL], app[REDIS] = storage.pool, storage.redis
        app[USERS], app[UPDATE_LOG] = storage.users, storage.update_log
        app[REFRESH_TOKENS] = storage.refresh_tokens
        app[ACCESS_TOKENS] = AccessTokens(secret, settings.access_token_ttl, previous)
        app[DEVICE_TOKENS] = DeviceTokens(secret, previous)
        app[SESSION_STATES] = SessionStates(storage.refresh_tokens.session_state)
        app[RATE_LIMITER], app[LOGIN_FAILURES] = storage.rate_limiter, storage.login_failures
        yield


async def _sync_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = SyncEngine(app[SETTINGS], app[UPDATE_LOG], app[REDIS],
                        sessions_ended=lambda event: _session_event(app, event),
                        keepalive=True)
    await engine.start()
    app[ENGINE], app[WRITER] = engine, engine.writer
    app[REGISTRY], app[PUBLISHER] = engine.registry, engine.publisher
    app[DOCUMENTS] = Documents(app[UPDATE_LOG], engine, app[REDIS])
    app[ACCOUNTS] = Accounts(app[STORAGE],
                             on_session_event=lambda event: _session_event(app, event))
    app[FOODS] = Foods(app[STORAGE].foods, FoodCache(app[REDIS]),
                       popular_ids=partial(popular_food_ids, app[POOL]))
    app[IMAGES] = Images(app[STORAGE].images, app[REDIS],
                         queue_max=app[SETTINGS].ocr_queue_max)
    yield
    await engine.stop()


def _session_event(app: web.Application, event: SessionEvent) -> None:
    """A user's sessions ended, or their consent changed, here or on another instance:
    read their sessions' state again, and close the user's sockets (4401 for ended
    sessions, 4403 for a withdrawn consent)."""
    app[SESSION_STATES].forget(event.user_id)
    if event.kind == RESTRICTED:
        app[REGISTRY].close_user(event.user_id, CloseCode.CONSENT_WITHDRAWN,
                                 "consent withdrawn")
    elif event.kind != RESTORED:
        app[REGISTRY].close_user(event.user_id)


async def _close_sockets(app: web.Application) -> None:
    """on_shutdown runs before handlers are awaited: close live sockets so they end."""
    if ENGINE in app:
        await app[ENGINE].close_rooms()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[metrics.metrics_middleware, cors_middleware, error_middleware],
        client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(_sync_ctx)
    app.cleanup_ctx.append(metrics.metrics_listener)
    app.cleanup_ctx.append(scheduled_retention)
    app.cleanup_ctx.append(scheduled_popular)
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(add_standard_headers)
    app.add_routes(health.routes)
    app.add_routes(metrics.routes)
    app.add_routes(auth.routes)
    app.add_routes(documents.routes)
    app.add_routes(users.routes)
    app.add_routes(export.routes)
    app.add_routes(food_logs.routes)
    app.add_routes(foods.routes)
    app.add_routes(images.routes)
    app.add_routes(openapi.routes)
    app.router.add_get("/sync/{name:" + DOC_NAME + "}", sync_endpoint)
    webapp.add_routes(app)  # the web client at /app/ (docs/webapp.md)
    return app
