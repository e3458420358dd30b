"""``modi-sync serve`` and ``modi-sync migrate`` as real processes (docs/api.md,
"Processes and configuration").

``serve`` runs on its own embedded PostgreSQL and Redis under a fresh data dir, the
no-setup default; ``migrate`` runs against the test session's PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil
import pytest
from pycrdt import Map

from storage.embedded import EmbeddedPostgres

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls, _private_dir
from .yclient import YClient, eventually

MIGRATIONS = sorted(
    int(p.name.split("_", 1)[0])
    for p in (Path(__file__).parent.parent / "storage" / "migrations").glob("*.sql")
)


# -- helpers --------------------------------------------------------------------------


def redis_pid(data_dir: Path) -> int:
    """The embedded Redis's process (its pid file is under the data dir)."""
    return int((data_dir / "redis" / "redis.pid").read_text())


def exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # not reaped yet
    except psutil.NoSuchProcess:
        return True


def postgres_processes(pg_dir: Path) -> list[psutil.Process]:
    """Postmasters whose command line names this data dir (the -D argument)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pg_dir.resolve()) in cmdline:
            found.append(proc)
    return found


@pytest.fixture
def leftovers_reaped(embedded_server: ServerProcess) -> Iterator[ServerProcess]:
    """Whatever a failed test leaves running under its data dir is stopped afterwards."""
    yield embedded_server
    if embedded_server.proc is not None and embedded_server.proc.poll() is None:
        embedded_server.stop()
    for proc in postgres_processes(embedded_server.data_dir / "pg"):  # started by this test
        proc.terminate()
        try:
            proc.wait(10)
        except psutil.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(OSError, ValueError):  # no pid file: Redis stopped
        os.kill(redis_pid(embedded_server.data_dir), signal.SIGKILL)


def sync_url(server: ServerProcess, token: str, name: str = "default") -> str:
    return f"{server.ws_url}/sync/{name}?token={token}"


async def start(server: ServerProcess) -> dict:
    await asyncio.to_thread(server.start)
    return await asyncio.to_thread(server.register)


async def connected(http: aiohttp.ClientSession, url: str) -> YClient:
    y = await YClient(http, url).connect()
    await y.wait_synced()
    return y


# -- serve ----------------------------------------------------------------------------


async def test_sigterm_closes_sockets_with_1001_exits_0_and_stops_postgres_and_redis(
    leftovers_reaped, http
):
    server = leftovers_reaped
    user = await start(server)
    pg_dir = server.data_dir / "pg"
    assert postgres_processes(pg_dir), "serve did not start its embedded PostgreSQL"
    redis = redis_pid(server.data_dir)
    url = sync_url(server, user["access_token"])
    a, b = await connected(http, url), await connected(http, url)
    a.workouts()["w1"] = Map({"name": "squat", "sets": 5})
    await eventually(lambda: "w1" in b.workouts())

    returncode = await asyncio.to_thread(server.stop)

    assert returncode == 0
    assert await a.wait_closed() == 1001
    assert await b.wait_closed() == 1001
    assert postgres_processes(pg_dir) == []
    assert not (pg_dir / "postmaster.pid").exists()
    assert exited(redis)

    # What reached b was stored: a restart serves it.
    await asyncio.to_thread(server.start)
    fresh = await connected(http, url)
    assert fresh.workouts().to_py() == {"w1": {"name": "squat", "sets": 5.0}}
    await fresh.disconnect()


async def test_sigkill_leaves_postgres_running_and_the_next_start_adopts_it(
    leftovers_reaped, http
):
    server = leftovers_reaped
    user = await start(server)
    pg_dir = server.data_dir / "pg"
    url = sync_url(server, user["access_token"])
    a, b = await connected(http, url), await connected(http, url)
    for i in range(20):
        a.workouts()[f"w{i}"] = Map({"sets": i})
    await eventually(lambda: len(b.workouts()) == 20)  # reached b, so stored
    expected = b.workouts().to_py()
    postmaster = postgres_processes(pg_dir)
    assert len(postmaster) == 1
    redis = redis_pid(server.data_dir)

    await asyncio.to_thread(server.kill)  # SIGKILL: no shutdown code runs at all
    await a.wait_closed()
    await b.wait_closed()
    assert postgres_processes(pg_dir) == postmaster  # the leftovers, still running
    assert not exited(redis)

    await asyncio.to_thread(server.start)  # must not be blocked by them
    assert redis_pid(server.data_dir) == redis  # adopted
    fresh = await connected(http, url)
    assert fresh.workouts().to_py() == expected
    fresh.workouts()["after"] = Map({"sets": 1})
    other = await connected(http, url)
    await eventually(lambda: "after" in other.workouts())
    await fresh.disconnect()
    await other.disconnect()

    # This start owns the servers now: a clean stop takes them down.
    assert await asyncio.to_thread(server.stop) == 0
    assert postgres_processes(pg_dir) == []
    assert exited(redis)


async def test_sigkill_twice_in_a_row_still_starts(leftovers_reaped, http):
    server = leftovers_reaped
    user = await start(server)
    url = sync_url(server, user["access_token"])
    a = await connected(http, url)
    b = await connected(http, url)
    a.workouts()["w1"] = Map({"sets": 1})
    await eventually(lambda: "w1" in b.workouts())
    for _ in range(2):
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
    fresh = await connected(http, url)
    assert "w1" in fresh.workouts()
    await fresh.disconnect()
    assert await asyncio.to_thread(server.stop) == 0
    assert postgres_processes(server.data_dir / "pg") == []


# -- migrate --------------------------------------------------------------------------


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def empty_database(services: ServiceUrls) -> AsyncIterator[str]:
    name = f"modi_migrate_{uuid.uuid4().hex[:10]}"
    await _admin(services.database_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(services.database_url, name)
    finally:
        await _admin(services.database_url, f'DROP DATABASE "{name}" WITH (FORCE)')


def _migrate_process(database_url: str | None, redis_url: str | None,
                     data_dir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(JWT_SECRET=JWT_SECRET, MODI_DATA_DIR=str(data_dir))
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return subprocess.Popen([sys.executable, "-m", "modi_sync.cli", "migrate"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def test_two_concurrent_migrates_both_succeed_and_apply_each_version_once(
    empty_database, services, tmp_path
):
    procs = [_migrate_process(empty_database, services.redis_url, tmp_path / f"d{i}")
             for i in range(2)]
    outputs = [await asyncio.to_thread(p.communicate, timeout=60) for p in procs]
    for proc, (out, _) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out.decode()

    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch(
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1")
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == MIGRATIONS
    assert all(r["n"] == 1 for r in rows)
    assert {"users", "documents", "doc_updates", "schema_migrations"} <= tables

    # And once more, on a current schema: nothing to do, still success.
    again = _migrate_process(empty_database, services.redis_url, tmp_path / "d3")
    out, _ = await asyncio.to_thread(again.communicate, timeout=60)
    assert again.returncode == 0, out.decode()


async def _schema_versions(dsn: str) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY 1")
    finally:
        await conn.close()
    return [(r["version"], r["n"]) for r in rows]


async def test_two_concurrent_migrates_on_a_fresh_embedded_data_dir():
    """Both start the same embedded PostgreSQL and Redis at once; both succeed, neither
    leaves them up. (Two processes rarely start at the same instant: the starts'
    race is caught for certain in tests/test_embedded.py.)"""
    data_dir = _private_dir() / "fresh"  # not under pytest's tmp root: see _private_dir
    procs = [_migrate_process(None, None, data_dir) for _ in range(2)]
    try:
        outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
        for proc, (out, _) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out.decode()
        assert postgres_processes(data_dir / "pg") == []
        assert not (data_dir / "redis" / "redis.pid").exists()  # Redis removes it as it stops

        pg = EmbeddedPostgres(data_dir / "pg")
        dsn = await asyncio.to_thread(pg.start)
        try:
            assert await _schema_versions(dsn) == [(v, 1) for v in MIGRATIONS]
        finally:
            await asyncio.to_thread(pg.stop)
    finally:
        for proc in postgres_processes(data_dir / "pg"):  # only after a failure
            proc.terminate()
