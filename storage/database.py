"""The PostgreSQL connection pool and the versioned migrations."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every instance of the server.
_MIGRATION_LOCK = 0x6D6F6469  # "modi"


async def create_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    # Nothing here sets session state (no SET, LISTEN, temp tables or open cursors), so
    # the reset asyncpg runs on every release (one more round trip) is not needed.
    return await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, reset=_no_reset)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Release a connection as it is; see create_pool."""


class DedicatedConnection:
    """One pool connection kept by a caller that runs one statement at a time.

    With asyncpg an acquire and a release cost more CPU than a one-row statement (the
    release runs in a shielded task; docs/performance.md, "Figures behind the code"):
    the group-commit writer and the
    document loader each keep one connection rather than pay that on every batch. It
    offers the pool's query methods; one that broke is given back and replaced on the
    next use. ``close`` gives it back for good: the pool waits for it when it closes,
    so a use after ``close`` (or an acquire that ends after it) is refused, never kept.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None
        self._closed = False

    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is not None:
            try:
                if not conn.is_closed():
                    return conn
            except asyncpg.InterfaceError:  # lost, and the pool has taken it back itself
                self._conn = None
        await self._give_back()
        if self._closed:
            raise asyncpg.InterfaceError("the dedicated connection is closed")
        return await self._keep(await self._pool.acquire())

    async def _keep(self, conn: asyncpg.Connection) -> asyncpg.Connection:
        if self._closed:  # closed while the acquire waited: kept now, the pool's close hangs
            await self._pool.release(conn)
            raise asyncpg.InterfaceError("the dedicated connection is closed")
        self._conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield await self._connection()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        result: list[asyncpg.Record] = await (await self._connection()).fetch(query, *args)
        return result

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await (await self._connection()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await (await self._connection()).fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await (await self._connection()).execute(query, *args)
        return result

    async def close(self) -> None:
        self._closed = True
        await self._give_back()

    async def _give_back(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):  # the pool has it back already
                await self._pool.release(conn)


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(pool: asyncpg.Pool, *, until: int | None = None) -> list[str]:
    """Apply the migrations not yet applied (up to version ``until``, for a test of a
    migration on data of the schema before it); return their file names.

    An advisory lock serialises instances that start at the same moment: the second
    one waits, then finds everything applied.
    """
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migration_files():
                if version in done or (until is not None and version > until):
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version, name,
                    )
                log.info("applied migration %s", name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now
