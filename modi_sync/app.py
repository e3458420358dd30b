"""The aiohttp application: resources in ``cleanup_ctx``, routes, middleware.

Start and stop are symmetrical: services (embedded or external), then the pool and
Redis, then the sync machinery; stopped in the reverse order, after every socket is
closed and every queued update is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import asyncpg
from aiohttp import web
from pycrdt import Doc
from redis.asyncio import BlockingConnectionPool, Redis

from storage.database import create_pool, migrate
from storage.doc_events import DocChannel, DocMessage, doc_events, subscribe_doc_events
from storage.embedded import EmbeddedPostgres, EmbeddedRedis
from storage.login_failures import LoginFailures
from storage.rate_limits import RateLimiter
from storage.refresh_tokens import RefreshTokens
from storage.session_events import ended_user_ids, subscribe_sessions_ended
from storage.update_log import Compaction, UpdateLog
from storage.users import UserStore

from .api import auth, docs, health, openapi
from .api.middleware import add_standard_headers, cors_middleware, error_middleware
from .config import Settings
from .contract import DOC_NAME
from .device_tokens import DeviceTokens
from .history import compact_document
from .keys import (
    ACCESS_TOKENS,
    DEVICE_TOKENS,
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
from .revocations import SessionStates
from .sync.bus import Gaps, UpdatePublisher
from .sync.handler import sync_endpoint
from .sync.keepalive import KeepAlive
from .sync.listener import RedisListener
from .sync.registry import AutoCompaction, Quota, RoomRegistry
from .sync.room import RoomLimits
from .sync.writer import GroupCommitWriter
from .tokens import AccessTokens, load_or_create_secret

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Where PostgreSQL and Redis are, and the embedded servers we started, if any."""

    database_url: str
    redis_url: str
    embedded_pg: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        if self.embedded_redis is not None:
            self.embedded_redis.stop()
        if self.embedded_pg is not None:
            self.embedded_pg.stop()


def start_services(settings: Settings) -> Services:
    """Blocking: start the embedded servers for whatever has no URL configured."""
    embedded_pg = embedded_redis = None
    database_url, redis_url = settings.database_url, settings.redis_url
    try:
        if database_url is None:
            embedded_pg = EmbeddedPostgres(settings.pg_dir)
            database_url = embedded_pg.start()
            log.info("embedded PostgreSQL running under %s", settings.pg_dir)
        if redis_url is None:
            embedded_redis = EmbeddedRedis(settings.redis_dir)
            redis_url = embedded_redis.start()
            log.info("embedded Redis running under %s", settings.redis_dir)
    except BaseException:
        Services("", "", embedded_pg, embedded_redis).stop()
        raise
    return Services(database_url, redis_url, embedded_pg, embedded_redis)


@contextlib.asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """A pool and a Redis client, on embedded or external services; for every command."""
    services = await asyncio.to_thread(start_services, settings)
    try:
        pool = await create_pool(services.database_url, max_size=settings.db_pool_max)
        try:
            # A blocking pool: a burst of requests waits for a free connection instead
            # of failing with "Too many connections".
            redis = Redis.from_pool(BlockingConnectionPool.from_url(
                services.redis_url, max_connections=settings.redis_pool_max, timeout=10))
            try:
                yield pool, redis
            finally:
                await redis.aclose()
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(services.stop)


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Before any service starts: a secret that cannot be trusted stops the start.
    secret = load_or_create_secret(settings.jwt_secret, settings.data_dir)
    previous = settings.jwt_previous_secrets
    async with open_storage(settings) as (pool, redis):
        await migrate(pool)
        app[POOL] = pool
        app[REDIS] = redis
        app[USERS] = UserStore(pool)
        app[UPDATE_LOG] = UpdateLog(pool)
        app[ACCESS_TOKENS] = AccessTokens(secret, settings.access_token_ttl, previous)
        app[DEVICE_TOKENS] = DeviceTokens(secret, previous)
        app[REFRESH_TOKENS] = RefreshTokens(
            redis, settings.refresh_token_ttl, settings.access_token_ttl
        )
        app[SESSION_STATES] = SessionStates(app[REFRESH_TOKENS].session_state)
        app[RATE_LIMITER] = RateLimiter(redis)
        app[LOGIN_FAILURES] = LoginFailures(
            redis, settings.login_free_failures, settings.login_backoff_max)
        yield


async def _sync_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, redis, log_store = app[SETTINGS], app[REDIS], app[UPDATE_LOG]

    async def compact(doc_id: int) -> Compaction:
        return await compact_document(log_store, doc_id, snapshot_every=settings.snapshot_every)

    instance = uuid.uuid4()  # tells this instance's bus messages from the others'
    publisher = UpdatePublisher(DocChannel(redis, instance), instance,
                                recheck=settings.bus_recheck_seconds)
    # The writer and the loader each run one statement at a time, on a connection of
    # their own: no pool acquire and release per batch.
    appends, loads = log_store.dedicated(), log_store.dedicated()
    writer = GroupCommitWriter(appends, max_batch=settings.commit_batch_max,
                               publish=publisher.publish)
    registry = RoomRegistry(
        loads, writer,
        idle_seconds=settings.room_idle_seconds,
        limits=RoomLimits(
            max_bytes=settings.max_document_bytes,
            max_pending_bytes=settings.max_pending_bytes,
            max_awareness_clients=settings.max_awareness_clients,
            max_awareness_bytes=settings.max_awareness_bytes),
        max_connections_per_user=settings.max_connections_per_user,
        quota=Quota(settings.max_documents_per_user, settings.max_user_bytes),
        auto_compaction=AutoCompaction(
            compact, settings.auto_compact_updates, settings.auto_compact_bytes,
            settings.auto_compact_interval),
        instance=instance,
    )
    gaps = Gaps(instance)
    listeners = [
        RedisListener(redis, subscribe_sessions_ended, ended_user_ids,
                      partial(_sessions_ended, app), "sessions-ended"),
        RedisListener(redis, subscribe_doc_events, partial(doc_events, ignore=instance),
                      partial(_doc_message, publisher, registry, gaps), "doc-events",
                      resubscribed=partial(_doc_events_back, publisher, registry, gaps)),
    ]
    # What the first client would otherwise wait for: statements planned, a Redis
    # connection open, and pycrdt's lazy imports (its first Doc loads an async backend).
    await appends.warm_up()
    await loads.warm_up()
    await redis.ping()
    Doc()
    await writer.start()
    for listener in listeners:
        await listener.start()
    await publisher.start()  # subscribed: say hello, and wait for the others' answers
    keepalive = KeepAlive(registry.connections, settings.keepalive_seconds)
    keepalive.start()
    app[WRITER], app[REGISTRY], app[PUBLISHER] = writer, registry, publisher
    yield
    keepalive.stop()
    for listener in listeners:
        await listener.stop()
    await writer.stop()  # every update received before shutdown is stored
    await publisher.stop()
    await appends.close()  # the pool waits for its connections when it closes
    await loads.close()


def _doc_message(
    publisher: UpdatePublisher, registry: RoomRegistry, gaps: Gaps, message: DocMessage
) -> None:
    """Another instance (or a command) published on the document channel."""
    publisher.heard(message)
    registry.handle_doc_events(message.events)
    if gaps.missed(message):
        registry.catch_up()


def _doc_events_back(publisher: UpdatePublisher, registry: RoomRegistry, gaps: Gaps) -> None:
    """The document channel's subscription was lost and is back."""
    publisher.subscribed_again()
    gaps.forget()
    registry.catch_up()


def _sessions_ended(app: web.Application, user_id: uuid.UUID) -> None:
    """Another instance revoked or logged out ``user_id``."""
    app[SESSION_STATES].forget(user_id)
    app[REGISTRY].close_user(user_id)


async def _close_sockets(app: web.Application) -> None:
    """on_shutdown runs before handlers are awaited: close live sockets so they end."""
    if REGISTRY in app:
        await app[REGISTRY].close()


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
    app.add_routes(docs.routes)
    app.add_routes(openapi.routes)
    app.router.add_get("/sync/{name:" + DOC_NAME + "}", sync_endpoint)
    return app
