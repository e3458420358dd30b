"""Shared fixtures: real PostgreSQL and Redis, the app, and a real server process.

By default the tests start the embedded PostgreSQL and Redis once per session, the
same way ``modi-sync serve`` does. With ``DATABASE_URL`` and ``REDIS_URL`` set they use
those servers instead; each session then works in a database of its own, dropped at
the end, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from modi_sync.app import create_app
from modi_sync.config import Settings
from storage.database import create_pool, migrate
from storage.embedded import EmbeddedPostgres, EmbeddedRedis

from .yclient import YClient

JWT_SECRET = "test-secret-" + "x" * 60

# The app under test, driven through pytest-aiohttp.
Client = TestClient[web.Request, web.Application]
# ``make_client(**changes)``: a client of the app, those settings changed.
MakeClient = Callable[..., Awaitable[Client]]


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


def _with_database(dsn: str, name: str) -> str:
    base, _, query = dsn.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceUrls]:
    external_db = os.environ.get("DATABASE_URL")
    external_redis = os.environ.get("REDIS_URL")
    started: list = []
    try:
        if external_db:
            name = f"modi_test_{uuid.uuid4().hex[:12]}"
            _run_sql(external_db, f'CREATE DATABASE "{name}"')
            started.append(lambda: _run_sql(external_db, f'DROP DATABASE "{name}" WITH (FORCE)'))
            database_url = _with_database(external_db, name)
            _citus_workers(external_db, name, started)
        else:
            pg = EmbeddedPostgres(_private_dir() / "pg")
            database_url = pg.start()
            started.append(pg.stop)
        if external_redis:
            redis_url = external_redis
        else:
            redis = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
            redis_url = redis.start()
            started.append(redis.stop)
        yield ServiceUrls(database_url, redis_url)
    finally:
        for stop in reversed(started):
            stop()


def _citus_workers(coordinator: str, name: str, started: list) -> None:
    """With ``MODI_TEST_CITUS_WORKERS`` ("host:port,..."), ``DATABASE_URL`` is a Citus
    coordinator (scripts/citus_cluster.sh): the session's database is made on each worker
    too, the citus extension in every copy, and the workers registered in the
    coordinator's; migration 007 then distributes the tables (docs/scaling.md)."""
    workers = [w for w in os.environ.get("MODI_TEST_CITUS_WORKERS", "").split(",") if w]
    if not workers:
        return
    url = urlsplit(coordinator)
    user = url.netloc.rpartition("@")[0]
    for worker in workers:
        dsn = url._replace(netloc=f"{user}@{worker}" if user else worker).geturl()
        _run_sql(dsn, f'CREATE DATABASE "{name}"')
        started.append(lambda dsn=dsn: _run_sql(dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))
        _run_sql(_with_database(dsn, name), "CREATE EXTENSION citus")
    here = _with_database(coordinator, name)
    _run_sql(here, "CREATE EXTENSION citus")
    _run_sql(here, f"SELECT citus_set_coordinator_host('{url.hostname}', {url.port or 5432})")
    for worker in workers:
        host, _, port = worker.rpartition(":")
        _run_sql(here, f"SELECT citus_add_node('{host}', {int(port)})")


def _private_dir() -> Path:
    """A data dir outside pytest's tmp tree.

    When run as root, embedded PostgreSQL runs as its own system user and opens the
    path's parents to it; pytest resets its tmp root to 0700 whenever another pytest
    starts, which would lock that user out mid-run.
    """
    path = Path(tempfile.mkdtemp(prefix="modi-test-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _run_sql(dsn: str, sql: str) -> None:
    import asyncio

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture
def settings(services: ServiceUrls, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=services.database_url,
        redis_url=services.redis_url,
        jwt_secret=JWT_SECRET,
        room_idle_seconds=0.2,
        # Every test shares 127.0.0.1 and one Redis: the limits are tested with
        # their own addresses (tests/test_rate_limits.py), not tripped by accident.
        rate_limit_auth="100000/60",
        rate_limit_refresh="100000/60",
        rate_limit_user="100000/60",
        metrics_listen="off",  # tests/test_metrics.py gives its own a free port
    )


@pytest.fixture
async def make_client(aiohttp_client: AiohttpClient, settings: Settings) -> MakeClient:
    """Start the app with ``settings`` (optionally changed) and return a test client."""

    async def make(**changes: Any) -> Client:
        return await aiohttp_client(create_app(replace(settings, **changes)))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


@pytest.fixture
async def pool(services: ServiceUrls) -> AsyncIterator[asyncpg.Pool]:
    """A migrated pool of the server's own kind, for tests of the storage-facing parts."""
    pool = await create_pool(services.database_url, max_size=4)
    await migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def db(services: ServiceUrls) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, to look at what is stored."""
    conn = await asyncpg.connect(services.database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def register(client: Client, email: str | None = None,
                   password: str = "correct horse") -> dict[str, Any]:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    resp = await client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["data"]


def unique_gtin13() -> str:
    """A valid EAN-13 no other test uses: the tests share one database, where a barcode
    belongs to one food."""
    body = "2" + str(uuid.uuid4().int)[:11]  # 2...: in-store numbers, no real product
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def ws_url(client: Client, name: str, token: str) -> str:
    return str(client.make_url(f"/sync/{name}")) + f"?token={token}"


async def synced(client: Client, token: str, name: str = "default") -> YClient:
    """A y-websocket client of document ``name``, connected and synced."""
    conn = await YClient(client.session, ws_url(client, name, token)).connect()
    await conn.wait_synced()
    return conn


# -- a real `modi-sync serve` process ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OnLoopback:
    """A server process's addresses: 127.0.0.1 and its ``port``."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


class ServerProcess(OnLoopback):
    """``modi-sync serve`` on loopback, as a user runs it; restartable and killable."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.env = env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir / "server.log"

    def start(self, timeout: float = 60.0) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "modi_sync.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not listen: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def register(self) -> dict:
        import json
        import urllib.request

        body = json.dumps({"email": f"u-{uuid.uuid4().hex[:10]}@example.com",
                           "password": "correct horse"}).encode()
        req = urllib.request.Request(self.http_url + "/api/v1/auth/register", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
            return json.loads(resp.read())["data"]


@pytest.fixture
def server(services: ServiceUrls, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on the test session's services (external ones if the env names them)."""
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
               JWT_SECRET=JWT_SECRET, MODI_ROOM_IDLE_SECONDS="0.5",
               MODI_RATE_LIMIT_AUTH="100000/60", MODI_RATE_LIMIT_REFRESH="100000/60",
               MODI_RATE_LIMIT_USER="100000/60")
    proc = ServerProcess(tmp_path, env)
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


@pytest.fixture
def embedded_server() -> Iterator[ServerProcess]:
    """A server on its own embedded PostgreSQL and Redis: the no-setup default."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["JWT_SECRET"] = secrets.token_urlsafe(32)
    # Loading the food dataset on the first start would add work to every such test;
    # tests/test_food_import.py turns it back on where it is the point.
    env["MODI_FOODS_AUTOLOAD"] = "off"
    proc = ServerProcess(_private_dir(), env)
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def redis(services: ServiceUrls) -> AsyncIterator[Redis]:
    """A direct Redis client, to look at or plant keys."""
    client = Redis.from_url(services.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


# -- the `modi-sync` command -------------------------------------------------------------


async def run_cli_raw(services: ServiceUrls, *args: str, stdin: bytes = b"",
                      database_url: str | None = None,
                      timeout: float = 120) -> tuple[int, bytes, str]:
    """``modi-sync ARGS`` in a process of its own, on the session's services (or
    ``database_url``): its exit code, stdout as bytes and stderr."""
    env = dict(os.environ, DATABASE_URL=database_url or services.database_url,
               REDIS_URL=services.redis_url, JWT_SECRET=JWT_SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modi_sync.cli", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    assert proc.returncode is not None
    return proc.returncode, out, err.decode()


async def run_cli(services: ServiceUrls, *args: str, stdin: bytes = b"",
                  database_url: str | None = None) -> tuple[int, str, str]:
    """``run_cli_raw`` with stdout as text."""
    code, out, err = await run_cli_raw(services, *args, stdin=stdin,
                                       database_url=database_url)
    return code, out.decode(), err
