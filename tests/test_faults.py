"""Faults survived while clients write: PostgreSQL restarted, Redis restarted under two
instances, PostgreSQL's disk full (issue 24; figures in docs/reliability.md).

Each test drives real ``modi-sync serve`` processes and y-websocket clients on
loopback, breaks a real server of its own under them, and checks what the contract
promises: an update nobody could store reaches nobody, the clients are closed with a
code that tells them to come back (1011), the server recovers by itself, and nothing
any client saw or wrote is lost. Every test prints its figures (``-s`` shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pycrdt import Doc, Map

from modi_sync.contract import CloseCode

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls, _private_dir
from .faults import (
    ROOT,
    DebianCluster,
    PgServer,
    RedisServer,
    Scribe,
    embedded_dsn,
    embedded_pg,
    fill,
    keys,
    private_dir,
    small_tmpfs,
    stored_state,
)
from .yclient import YClient, eventually

pytestmark = pytest.mark.timeout(120)

DOC = "faults"
WRITERS = 3


def _server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(JWT_SECRET=JWT_SECRET, MODI_FOODS_AUTOLOAD="off", MODI_ROOM_IDLE_SECONDS="0.5",
               MODI_RATE_LIMIT_AUTH="100000/60", MODI_RATE_LIMIT_REFRESH="100000/60",
               MODI_RATE_LIMIT_USER="100000/60", MODI_LOG_FORMAT="text")
    env.update(extra)
    return env


def _stop(server: ServerProcess) -> None:
    # Shown by pytest when the test failed: what the server logged about it.
    lines = [line for line in server.log_path.read_text(errors="replace").splitlines()
             if "publishing to other instances failed" not in line]  # one per batch
    print(f"--- {server.log_path} ---\n" + "\n".join(lines[-80:]))
    if server.proc is not None and server.proc.poll() is None:
        try:
            server.stop(30)
        except subprocess.TimeoutExpired:
            server.kill()


async def _http(method: str, url: str, body: Any = None,
                token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http, \
            http.request(method, url, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


def _one_key_update(key: str) -> bytes:
    doc = Doc()
    doc.get(ROOT, type=Map)[key] = "over http"
    return doc.get_update()


async def _post_update(server: ServerProcess, token: str, key: str) -> tuple[int, Any]:
    """``POST /api/v1/docs/{DOC}/update`` of an update that adds ``key``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, \
            http.post(f"{server.http_url}/api/v1/docs/{DOC}/update",
                      data=_one_key_update(key),
                      headers={"Authorization": f"Bearer {token}",
                               "Content-Type": "application/octet-stream"}) as resp:
        return resp.status, await resp.json()


async def _closed_and_writing_offline(scribes: list[Scribe]) -> None:
    """The writers' rooms failed to store and closed them (1011); they write on offline."""
    await eventually(lambda: all(CloseCode.INTERNAL_ERROR in s.closes for s in scribes),
                     timeout=30)
    before = {s.tag: len(s.written) for s in scribes}
    await eventually(lambda: all(len(s.written) >= before[s.tag] + 100 for s in scribes))


async def _all_hold_everything(server: ServerProcess, token: str, scribes: list[Scribe],
                               everyone: list[Scribe]) -> set[str]:
    """After the fault: the writers stop, the update refused over HTTP was sent again,
    and every client holds every entry written. Returns the entries written."""
    for scribe in scribes:
        scribe.stop_writing()
    await eventually(lambda: _posted(server, token, "http-0"))
    written = {k for s in scribes for k in s.written} | {"http-0"}
    await eventually(lambda: all(s.held() >= written for s in everyone), timeout=30)
    return written


async def _posted(server: ServerProcess, token: str, key: str) -> bool:
    """Sent again until stored, as an app's background sync does after a 503."""
    return (await _post_update(server, token, key))[0] == 200


async def _status(url: str) -> int:
    try:
        return (await _http("GET", url))[0]
    except (aiohttp.ClientError, TimeoutError):
        return 0


def _sync_url(server: ServerProcess, token: str) -> Callable[[], str]:
    return lambda: f"{server.ws_url}/sync/{DOC}?token={token}"


@dataclass
class Figures:
    """What a fault test measured, printed at its end for docs/reliability.md."""

    name: str
    written: int = 0
    outage_s: float = 0.0
    ready_after_s: float = 0.0  # from the service's return to /ready 200
    converged_after_s: float = 0.0  # from the service's return to every client holding all
    closes: str = ""
    lost: int = -1

    def show(self) -> None:
        print(f"\nFIGURES {self.name}: written={self.written} outage={self.outage_s:.2f}s "
              f"ready_after={self.ready_after_s:.2f}s converged_after="
              f"{self.converged_after_s:.2f}s closes={self.closes} lost={self.lost}")


def _codes(scribes: list[Scribe]) -> dict[int | None, int]:
    codes: dict[int | None, int] = {}
    for scribe in scribes:
        for code in scribe.closes:
            codes[code] = codes.get(code, 0) + 1
    return codes


async def _fresh_keys(server: ServerProcess, token: str) -> set[str]:
    """What a new client of the document is sent."""
    async with aiohttp.ClientSession() as http:
        fresh = await YClient(http, _sync_url(server, token)()).connect()
        await fresh.wait_synced()
        held = keys(fresh.doc)
        await fresh.disconnect()
    return held


# -- PostgreSQL restarted ------------------------------------------------------------------


@dataclass
class PgSetup:
    server: ServerProcess
    pg: PgServer
    dsn: str


@pytest.fixture(params=["embedded", "debian"])
def pg_setup(request: pytest.FixtureRequest, services: ServiceUrls) -> Iterator[PgSetup]:
    if request.param == "embedded":
        server = ServerProcess(_private_dir(), _server_env())
        server.start()
        try:
            yield PgSetup(server, embedded_pg(server.data_dir), embedded_dsn(server.data_dir))
        finally:
            _stop(server)
        return
    with private_dir("modi-faults-pg-") as root:
        cluster = DebianCluster(root)
        cluster.start()
        try:
            cluster.create_database()
            server = ServerProcess(root, _server_env(DATABASE_URL=cluster.dsn,
                                                     REDIS_URL=services.redis_url))
            server.start()
            try:
                yield PgSetup(server, cluster, cluster.dsn)
            finally:
                _stop(server)
        finally:
            if cluster.running():
                cluster.stop("immediate")


async def test_postgres_restarted_while_clients_write(pg_setup: PgSetup) -> None:
    """Stop PostgreSQL under three writing clients and a watcher, hold it down until
    every writer was closed (1011) and wrote on offline, start it again: nothing is
    fanned out meanwhile, /ready says 503 and then 200, and every update is stored."""
    server, pg = pg_setup.server, pg_setup.pg
    figures = Figures(f"postgres-restart-{'embedded' if pg.user != 'postgres' else 'debian'}")
    user = server.register()
    token = user["access_token"]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        scribes = [Scribe(http, _sync_url(server, token), f"w{i}") for i in range(WRITERS)]
        watcher = Scribe(http, _sync_url(server, token), "watch", writes=False)
        everyone = [*scribes, watcher]
        try:
            for scribe in everyone:
                scribe.start()
            await eventually(lambda: len(watcher.held()) >= 60, timeout=20)

            await asyncio.to_thread(pg.stop)
            down = loop.time()
            # 503 while it is down (each probe waits up to 2 s for PostgreSQL).
            await eventually(lambda: _ready_is(server, 503))
            await _closed_and_writing_offline(scribes)
            # A write over HTTP meanwhile: refused, so the app sends it again later.
            outage_post = await _post_update(server, token, "http-0")

            up_started = loop.time()
            figures.outage_s = up_started - down
            await asyncio.to_thread(pg.start)
            up = loop.time()
            await eventually(lambda: _ready_is(server, 200), timeout=30)
            figures.ready_after_s = loop.time() - up

            written = await _all_hold_everything(server, token, scribes, everyone)
            figures.converged_after_s = loop.time() - up
        finally:
            for scribe in everyone:
                await scribe.close()

    assert server.proc is not None and server.proc.poll() is None, "the server restarted"
    # Nobody was sent an update while PostgreSQL was down: it could not have been stored.
    seen_down = sorted(k for s in everyone for k, t in s.first_seen.items()
                       if down < t < up_started)
    assert seen_down == [], f"fanned out while PostgreSQL was down: {seen_down[:10]}"
    # Closed with a code, never a reset (1006) or no code at all.
    codes = _codes(everyone)
    figures.closes = str(codes)
    assert set(codes) <= {CloseCode.INTERNAL_ERROR}, codes
    stored = keys(await stored_state(pg_setup.dsn, user["user"]["id"], DOC))
    figures.written = len(written)
    figures.lost = len(written - stored)
    assert written <= stored, f"lost: {sorted(written - stored)[:10]}"
    assert await _fresh_keys(server, token) == stored
    figures.show()
    _check_outage_answer(*outage_post)


def _check_outage_answer(status: int, body: Any) -> None:
    """A request that needs a storage that is down gets 503 UNAVAILABLE, not a 500."""
    assert status == 503, body
    assert body["error"]["code"] == "UNAVAILABLE", body


async def _ready_is(server: ServerProcess, status: int) -> bool:
    return await _status(server.http_url + "/ready") == status


async def _all_ready(*servers: ServerProcess) -> bool:
    return all([await _ready_is(server, 200) for server in servers])


# -- Redis restarted under two instances ----------------------------------------------------


@pytest.fixture
def redis_pair(services: ServiceUrls) -> Iterator[tuple[RedisServer, ServerProcess, ServerProcess]]:
    """A private Redis, and two instances sharing it and the session's PostgreSQL."""
    with private_dir("modi-faults-redis-") as root:
        redis = RedisServer(root)
        redis.start()
        servers = []
        try:
            for name in ("a", "b"):
                (root / name).mkdir()
                server = ServerProcess(root / name, _server_env(
                    DATABASE_URL=services.database_url, REDIS_URL=redis.url,
                    MODI_BUS_RECHECK_SECONDS="1"))
                server.start()
                servers.append(server)
            yield redis, servers[0], servers[1]
        finally:
            for server in servers:
                _stop(server)
            redis.stop()


async def _login(server: ServerProcess, email: str) -> tuple[int, Any]:
    return await _http("POST", server.http_url + "/api/v1/auth/login",
                       {"email": email, "password": "correct horse"})


async def test_redis_restarted_while_clients_write_on_two_instances(
    redis_pair: tuple[RedisServer, ServerProcess, ServerProcess],
) -> None:
    """Stop Redis under clients of one document on two instances, then start it again:
    while it is away, what needs it answers 503 (logins, authenticated requests, new
    sync sockets, logouts: nothing is let through unchecked) and open sockets go on
    writing; once it is back, every client and the store hold every update, and a
    logout closes the user's sockets on the other instance again."""
    redis, a, b = redis_pair
    figures = Figures("redis-restart-two-instances")
    user = a.register()
    email, token = user["user"]["email"], user["access_token"]
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        scribes = [Scribe(http, _sync_url(server, token), f"{server_name}{i}")
                   for server_name, server in (("a", a), ("b", b)) for i in range(2)]
        status, second = await _login(b, email)  # a second session, ended after the fault
        assert status == 200, second
        victim = Scribe(http, _sync_url(b, second["data"]["access_token"]), "victim",
                        writes=False, backoff=60)
        everyone = [*scribes, victim]
        try:
            for scribe in everyone:
                scribe.start()
            # Fan-out across the instances works before the fault.
            await eventually(lambda: all(
                sum(k.startswith("b" if s.tag[0] == "a" else "a") for k in s.held()) >= 20
                for s in scribes), timeout=20)

            await asyncio.to_thread(redis.stop)
            down = loop.time()
            written_before = {s.tag: len(s.written) for s in scribes}
            answers = {}
            answers["login"] = await _login(a, email)
            answers["register"] = await _http("POST", a.http_url + "/api/v1/auth/register", {
                "email": f"x-{secrets.token_hex(4)}@example.com", "password": "correct horse"})
            answers["logout"] = await _http("POST", b.http_url + "/api/v1/auth/logout",
                                            {"refresh_token": second["data"]["refresh_token"]})
            # Past the 2 s a session's state is kept: it cannot be checked, so refused.
            await eventually(lambda: _docs_status(b, token, 503), timeout=10)
            answers["docs"] = await _http("GET", b.http_url + "/api/v1/docs", token=token)
            answers["ready"] = await _http("GET", a.http_url + "/ready")
            # A new socket is refused once the instance's copy of the session's state
            # (kept 2 s) is too old to trust and Redis cannot be asked.
            upgrades: list[tuple[int, Any]] = []

            async def upgrade_refused() -> bool:
                async with http.get(
                        _sync_url(a, token)().replace("ws://", "http://"),
                        headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                 "Sec-WebSocket-Version": "13",
                                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
                    if resp.status == 101:
                        return False
                    upgrades.append((resp.status, await resp.json()))
                    return True

            await eventually(upgrade_refused, timeout=10)
            answers["upgrade"] = upgrades[-1]
            # The open sockets wrote on, and the victim's socket was not closed.
            await eventually(lambda: all(len(s.written) >= written_before[s.tag] + 150
                                         for s in scribes))
            assert victim.closes == [] and victim.connected.is_set()
            assert all(s.closes == [] for s in scribes), _codes(scribes)

            up_started = loop.time()
            figures.outage_s = up_started - down
            await asyncio.to_thread(redis.start)
            up = loop.time()
            await eventually(lambda: _all_ready(a, b), timeout=30)
            figures.ready_after_s = loop.time() - up

            for scribe in scribes:
                scribe.stop_writing()
            written = {k for s in scribes for k in s.written}
            await eventually(lambda: all(s.held() >= written for s in scribes), timeout=30)
            figures.converged_after_s = loop.time() - up

            # Revocation works across the instances again: the sessions-ended
            # subscription of b came back with Redis.
            status, _ = await _http("POST", a.http_url + "/api/v1/auth/logout",
                                    {"refresh_token": second["data"]["refresh_token"]})
            assert status == 204
            await eventually(lambda: CloseCode.SESSION_ENDED in victim.closes, timeout=5)
            status, _ = await _http("GET", b.http_url + "/api/v1/docs",
                                    token=second["data"]["access_token"])
            assert status == 401
            assert (await _login(a, email))[0] == 200
        finally:
            for scribe in everyone:
                await scribe.close()

    figures.closes = str(_codes(scribes))
    stored = keys(await stored_state(_database_url(a), user["user"]["id"], DOC))
    figures.written = len(written)
    figures.lost = len(written - stored)
    assert written <= stored, f"lost: {sorted(written - stored)[:10]}"
    assert await _fresh_keys(b, token) == stored
    figures.show()
    for what, (status, body) in answers.items():
        print(f"while Redis was away: {what} -> {status} {body}")
    assert answers["ready"][0] == 503
    for what in ("login", "register", "logout", "docs", "upgrade"):
        _check_outage_answer(*answers[what])


def _database_url(server: ServerProcess) -> str:
    return server.env["DATABASE_URL"]


async def _docs_status(server: ServerProcess, token: str, status: int) -> bool:
    return (await _http("GET", server.http_url + "/api/v1/docs", token=token))[0] == status


# -- PostgreSQL's disk full -----------------------------------------------------------------


@pytest.fixture
def full_disk_setup(services: ServiceUrls) -> Iterator[tuple[DebianCluster, ServerProcess]]:
    """A Debian PostgreSQL on a 64 MB tmpfs (1 MB WAL segments, so that it fits with
    room to spare), and a server on it; unmounted afterwards, whatever happened."""
    with small_tmpfs(64) as (root, refused):
        if root is None:
            pytest.skip(f"mounting a tmpfs is not permitted here: {refused}")
        cluster = DebianCluster(root, wal_segment_mb=1)
        cluster.start()
        try:
            cluster.create_database()
            with private_dir("modi-faults-full-") as data_dir:
                server = ServerProcess(data_dir, _server_env(DATABASE_URL=cluster.dsn,
                                                             REDIS_URL=services.redis_url))
                server.start()
                try:
                    yield cluster, server
                finally:
                    _stop(server)
        finally:
            (root / "filler").unlink(missing_ok=True)
            if cluster.running():
                cluster.stop("immediate")


async def test_postgres_disk_full_while_clients_write(
    full_disk_setup: tuple[DebianCluster, ServerProcess],
) -> None:
    """Fill PostgreSQL's disk under three writing clients: their writes fail and they
    are closed with 1011; once the filler goes, the server stores again by itself,
    every client's updates are stored, and what a new client is sent is what the
    stored rows make (nothing half-stored)."""
    cluster, server = full_disk_setup
    figures = Figures("postgres-disk-full")
    user = server.register()
    token = user["access_token"]
    loop = asyncio.get_running_loop()
    filler = cluster.root / "filler"
    async with aiohttp.ClientSession() as http:
        scribes = [Scribe(http, _sync_url(server, token), f"w{i}", payload=512)
                   for i in range(WRITERS)]
        watcher = Scribe(http, _sync_url(server, token), "watch", writes=False)
        everyone = [*scribes, watcher]
        try:
            for scribe in everyone:
                scribe.start()
            await eventually(lambda: len(watcher.held()) >= 60, timeout=20)

            filled = await asyncio.to_thread(fill, filler)
            full = loop.time()
            await _closed_and_writing_offline(scribes)
            outage_post = await _post_update(server, token, "http-0")

            filler.unlink()
            freed = loop.time()
            figures.outage_s = freed - full
            assert cluster.running(), "PostgreSQL itself stopped on the full disk"
            await eventually(lambda: _ready_is(server, 200), timeout=30)
            figures.ready_after_s = loop.time() - freed
            written = await _all_hold_everything(server, token, scribes, everyone)
            figures.converged_after_s = loop.time() - freed
        finally:
            for scribe in everyone:
                await scribe.close()

    assert server.proc is not None and server.proc.poll() is None, "the server restarted"
    codes = _codes(everyone)
    figures.closes = str(codes)
    assert set(codes) <= {CloseCode.INTERNAL_ERROR}, codes
    stored = keys(await stored_state(cluster.dsn, user["user"]["id"], DOC))
    figures.written = len(written)
    figures.lost = len(written - stored)
    assert written <= stored, f"lost: {sorted(written - stored)[:10]}"
    assert await _fresh_keys(server, token) == stored
    print(f"filler: {filled / 2**20:.1f} MiB")
    figures.show()
    # A small row may still fit a page's free space on a full disk: then it was stored
    # (200, and "http-0" is among the stored keys checked above), else it is a 503.
    if outage_post[0] != 200:
        _check_outage_answer(*outage_post)

