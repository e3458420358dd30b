"""``/health`` and ``/ready`` (docs/api.md, "Operations").

To take a service away without touching the session's servers, the app under test
reaches PostgreSQL or Redis through a small TCP relay that the test can cut and restore.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from .conftest import Client, MakeClient, ServiceUrls
from .yclient import eventually


class Relay:
    """127.0.0.1:port -> a TCP or unix-socket target; ``cut()`` drops every connection."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if isinstance(self.target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        pumps = [asyncio.ensure_future(self._pump(reader, up_writer)),
                 asyncio.ensure_future(self._pump(up_reader, writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


def _postgres_target(dsn: str) -> tuple[tuple[str, int] | str, str, str]:
    """Where the DSN points (host:port or a unix socket), its user and database."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    port = parts.port or int(query.get("port", ["5432"])[0])
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    target = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
    return target, parts.username or "postgres", parts.path.lstrip("/")


def _redis_target(url: str) -> tuple[tuple[str, int] | str, str]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path, "0"
    return (parts.hostname or "127.0.0.1", parts.port or 6379), parts.path.lstrip("/") or "0"


@pytest.fixture
async def relays(services: ServiceUrls) -> AsyncIterator[dict[str, Relay]]:
    pg_target, _, _ = _postgres_target(services.database_url)
    redis_target, _ = _redis_target(services.redis_url)
    made = {"postgres": Relay(pg_target), "redis": Relay(redis_target)}
    for relay in made.values():
        await relay.start()
    yield made
    for relay in made.values():
        if relay.running:
            await relay.cut()


@pytest.fixture
async def relayed_client(make_client: MakeClient, services: ServiceUrls,
                         relays: dict[str, Relay]) -> Client:
    _, user, database = _postgres_target(services.database_url)
    _, redis_db = _redis_target(services.redis_url)
    return await make_client(
        database_url=f"postgresql://{user}@127.0.0.1:{relays['postgres'].port}/{database}",
        redis_url=f"redis://127.0.0.1:{relays['redis'].port}/{redis_db}",
    )


async def test_health_is_200(client):
    resp = await client.get("/health")
    assert resp.status == 200
    assert (await resp.json()) == {"data": {"status": "ok"}}
    assert "X-Request-ID" in resp.headers and "X-Timestamp" in resp.headers


async def test_ready_is_200_with_both_services_up(client):
    resp = await client.get("/ready")
    assert resp.status == 200
    assert (await resp.json()) == {"data": {"postgres": "ok", "redis": "ok"}}


async def test_ready_through_the_relays_is_200(relayed_client):
    resp = await relayed_client.get("/ready")
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("service", ["postgres", "redis"])
async def test_ready_is_503_while_a_service_is_away_and_200_again_after(
    relayed_client, relays, service
):
    assert (await relayed_client.get("/ready")).status == 200
    await relays[service].cut()

    resp = await relayed_client.get("/ready")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"]["code"] == "UNAVAILABLE"
    other = "redis" if service == "postgres" else "postgres"
    assert body["error"]["details"] == {service: "down", other: "ok"}
    # /health is about the process only.
    assert (await relayed_client.get("/health")).status == 200

    await relays[service].start()  # the same port again

    async def ready() -> bool:
        return (await relayed_client.get("/ready")).status == 200
    await eventually(ready, timeout=15)
