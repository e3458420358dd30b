"""Start-up that every process shares: `serve`, every command, and the coming worker.

``open_storage`` starts the embedded PostgreSQL and Redis for whatever has no URL
configured (or uses the external ones), opens a pool and a Redis client, applies the
migrations, and hands over the stores. Each process builds what it needs on top: the
server its sync engine and HTTP routes (app.py), a command the documents or accounts
service (cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis

from storage.audit import AuditLog
from storage.consents import ConsentStore
from storage.database import create_pool, migrate
from storage.embedded import EmbeddedPostgres, EmbeddedRedis
from storage.foods import FoodStore
from storage.images import ImageStore
from storage.login_failures import LoginFailures
from storage.rate_limits import RateLimiter
from storage.refresh_tokens import RefreshTokens
from storage.update_log import UpdateLog
from storage.users import UserStore

from .config import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Where PostgreSQL and Redis are, and the embedded servers started, if any."""

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


@dataclass(frozen=True)
class Storage:
    """PostgreSQL and Redis, open and migrated, and the stores every process uses."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    users: UserStore
    update_log: UpdateLog
    refresh_tokens: RefreshTokens
    audit: AuditLog
    consents: ConsentStore
    foods: FoodStore
    images: ImageStore
    rate_limiter: RateLimiter
    login_failures: LoginFailures
    migrations_applied: list[str]  # by this start, if any


@contextlib.asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    services = await asyncio.to_thread(start_services, settings)
    try:
        pool = await create_pool(services.database_url, max_size=settings.db_pool_max)
        try:
            # A blocking pool: a burst of requests waits for a free connection instead
            # of failing with "Too many connections".
            redis = Redis.from_pool(BlockingConnectionPool.from_url(
                services.redis_url, max_connections=settings.redis_pool_max, timeout=10))
            try:
                applied = await migrate(pool)
                yield Storage(
                    settings, pool, redis, UserStore(pool), UpdateLog(pool),
                    RefreshTokens(redis, settings.refresh_token_ttl,
                                  settings.access_token_ttl),
                    AuditLog(pool), ConsentStore(pool), FoodStore(pool), ImageStore(pool),
                    RateLimiter(redis),
                    LoginFailures(redis, settings.login_free_failures,
                                  settings.login_backoff_max),
                    applied,
                )
            finally:
                await redis.aclose()
        finally:
            await pool.close()
    finally:
        await asyncio.to_thread(services.stop)
