"""storage.database: the dedicated connection the writer and the loader keep."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from storage.database import DedicatedConnection, create_pool
from storage.update_log import UpdateLog

from .yclient import eventually

_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.AdminShutdownError,
         ConnectionError)


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


async def test_a_dedicated_connection_lost_while_idle_is_replaced(pool, db):
    dedicated = DedicatedConnection(pool)
    try:
        first = await dedicated.fetchval("SELECT pg_backend_pid()")
        # With a timeout it returns once the backend has exited, not when signalled.
        assert await db.fetchval("SELECT pg_terminate_backend($1::int, 10000)", first)
        with contextlib.suppress(*_LOST):  # fails only if the loss is not noticed yet
            await dedicated.fetchval("SELECT 1")
        assert await dedicated.fetchval("SELECT pg_backend_pid()") != first
    finally:
        await dedicated.close()


async def test_a_dedicated_connection_lost_during_a_query_fails_it_then_is_replaced(pool, db):
    dedicated = DedicatedConnection(pool)
    try:
        first = await dedicated.fetchval("SELECT pg_backend_pid()")
        sleeping = asyncio.ensure_future(dedicated.execute("SELECT pg_sleep(30)"))
        await eventually(lambda: _is_sleeping(db, first))
        assert await db.fetchval("SELECT pg_terminate_backend($1::int, 10000)", first)
        with pytest.raises(_LOST):
            await asyncio.wait_for(sleeping, 10)
        assert await dedicated.fetchval("SELECT pg_backend_pid()") != first
    finally:
        await dedicated.close()


async def test_an_acquire_that_ends_after_close_is_given_back_so_the_pool_closes(services):
    """A load that asked for the connection while the server stopped must not keep one:
    the pool's close waits for every connection given out (it hung CI once)."""
    pool = await create_pool(services.database_url, max_size=1)
    dedicated = DedicatedConnection(pool)
    try:
        held = await pool.acquire()  # the only connection: the dedicated one must wait
        waiting = asyncio.ensure_future(dedicated.fetchval("SELECT 1"))
        await eventually(lambda: not waiting.done() and pool.get_idle_size() == 0)
        await dedicated.close()
        await pool.release(held)
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await asyncio.wait_for(waiting, 10)
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await dedicated.fetchval("SELECT 1")  # and no use after close takes one either
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def _is_sleeping(db: asyncpg.Connection, pid: int) -> bool:
    return await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'"
        " AND state = 'active'", pid) == 1


async def test_a_dedicated_update_log_cannot_be_dedicated_again(pool):
    update_log = UpdateLog(pool).dedicated()
    try:
        with pytest.raises(TypeError):
            update_log.dedicated()
    finally:
        await update_log.close()
