"""The aiohttp application: resources in ``cleanup_ctx``, routes, middleware.

Start and stop are symmetrical: storage (runtime.py: embedded or external services,
the pool, Redis, migrations), then the sync engine and the services on top of it;
stopped in the reverse order, after every socket is closed and every queued update is
stored.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from storage.login_failures import LoginFailures
from storage.rate_limits import RateLimiter

from .accounts import Accounts
from .api import auth, documents, health, openapi
from .api.middleware import add_standard_headers, cors_middleware, error_middleware
from .app_keys import (
    ACCESS_TOKENS,
    ACCOUNTS,
    DEVICE_TOKENS,
    DOCUMENTS,
    ENGINE,
    LOGIN_FAILURES,
    POOL,
    PUBLISHER,
    RATE_LIMITER,
    REDIS,
    REFRESH_TOKENS,
    REGISTRY,
    SESSION_STATES,
    SETTINGS,
    UPDATE_LOG,
    USERS,
    WRITER,
)
from .config import Settings
from .contract import DOC_NAME
from .device_tokens import DeviceTokens
from .documents import Documents
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
        redis = storage.redis
        app[POOL], app[REDIS] = storage.pool, redis
        app[USERS], app[UPDATE_LOG] = storage.users, storage.update_log
        app[REFRESH_TOKENS] = storage.refresh_tokens
        app[ACCESS_TOKENS] = AccessTokens(secret, settings.access_token_ttl, previous)
        app[DEVICE_TOKENS] = DeviceTokens(secret, previous)
        app[SESSION_STATES] = SessionStates(storage.refresh_tokens.session_state)
        app[RATE_LIMITER] = RateLimiter(redis)
        app[LOGIN_FAILURES] = LoginFailures(
            redis, settings.login_free_failures, settings.login_backoff_max)
        yield


async def _sync_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = SyncEngine(app[SETTINGS], app[UPDATE_LOG], app[REDIS],
                        sessions_ended=lambda user_id: _sessions_ended(app, user_id),
                        keepalive=True)
    await engine.start()
    app[ENGINE], app[WRITER] = engine, engine.writer
    app[REGISTRY], app[PUBLISHER] = engine.registry, engine.publisher
    app[DOCUMENTS] = Documents(app[UPDATE_LOG], engine, app[REDIS])
    app[ACCOUNTS] = Accounts(app[USERS], app[REFRESH_TOKENS], app[REDIS],
                             on_sessions_ended=lambda user_id: _sessions_ended(app, user_id))
    yield
    await engine.stop()


def _sessions_ended(app: web.Application, user_id: uuid.UUID) -> None:
    """A user's sessions ended, here or on another instance: refuse their tokens (read
    their state again) and close the user's sockets (4401)."""
    app[SESSION_STATES].forget(user_id)
    app[REGISTRY].close_user(user_id)


async def _close_sockets(app: web.Application) -> None:
    """on_shutdown runs before handlers are awaited: close live sockets so they end."""
    if ENGINE in app:
        await app[ENGINE].close_rooms()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[cors_middleware, error_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_storage_ctx)
    app.cleanup_ctx.append(_sync_ctx)
    app.on_shutdown.append(_close_sockets)
    app.on_response_prepare.append(add_standard_headers)
    app.add_routes(health.routes)
    app.add_routes(auth.routes)
    app.add_routes(documents.routes)
    app.add_routes(openapi.routes)
    app.router.add_get("/sync/{name:" + DOC_NAME + "}", sync_endpoint)
    return app
