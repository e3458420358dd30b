"""storage.database: the dedicated connection the writer and the loader keep."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from storage.database import DedicatedConnection, create_pool
from storage.update_log import UpdateLog


async def test_a_dedicated_connection_is_one_backend_until_closed(services):
    pool = await create_pool(services.database_url, max_size=2)
    dedicated = DedicatedConnection(pool)
    try:
        first = await dedicated.fetchval("SELECT pg_backend_pid()")
        for _ in range(3):
            assert await dedicated.fetchval("SELECT pg_backend_pid()") == first
        async with dedicated.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == first
        # The pool's other connection serves everyone else meanwhile.
        assert await pool.fetchval("SELECT pg_backend_pid()") != first
    finally:
        await dedicated.close()
        await asyncio.wait_for(pool.close(), 10)  # it waits for every connection given out


async def test_a_broken_dedicated_connection_is_replaced(pool, db):
    dedicated = DedicatedConnection(pool)
    try:
        first = await dedicated.fetchval("SELECT pg_backend_pid()")
        await db.execute("SELECT pg_terminate_backend($1)", first)
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                            ConnectionError)):
            await dedicated.fetchval("SELECT 1")
        second = await dedicated.fetchval("SELECT pg_backend_pid()")
        assert second != first
    finally:
        await dedicated.close()


async def test_a_dedicated_update_log_cannot_be_dedicated_again(pool):
    log = UpdateLog(pool).dedicated()
    try:
        with pytest.raises(TypeError):
            log.dedicated()
    finally:
        await log.close()
