"""deploy/nginx.conf in front of two instances: sync and REST reach both, each client
keeps its own address for the rate limits, nginx's own errors are the contract's, and
the clients of an instance that stops come back through the other.

Skipped without an nginx (tests/nginx.py says where it is found).
"""

from __future__ import annotations

import asyncio
import io
import random
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from uuid import UUID

import aiohttp
import psutil
import pytest
from aiohttp import web
from pycrdt import Map

from modi_sync.app_keys import REGISTRY

from .conftest import free_port
from .nginx import NGINX, NginxProcess
from .yclient import YClient, eventually

pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx (set MODI_TEST_NGINX)")


@pytest.fixture
def nginx_for(tmp_path: Path) -> Iterator[Callable[..., NginxProcess]]:
    """Start nginx in front of the servers on the given ports."""
    started: list[NginxProcess] = []

    def start(*upstream_ports: int, terminator: str | None = None) -> NginxProcess:
        started.append(NginxProcess(tmp_path / f"nginx-{len(started)}", list(upstream_ports),
                                    terminator))
        return started[-1].start()

    yield start
    for proc in started:
        proc.stop()


def _loopback_address() -> str:
    """A loopback address of this test's own (all of 127/8 is the loopback), so its
    rate-limit counters are shared with no other test or earlier run."""
    address = "127.{}.{}.{}".format(*(random.randint(1, 254) for _ in range(3)))
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:  # macOS, say: only 127.0.0.1 is configured
            pytest.skip("needs the whole of 127.0.0.0/8 on the loopback interface")
    return address


@pytest.fixture
async def session_from() -> AsyncIterator:
    """aiohttp sessions whose connections come from a given loopback address."""
    sessions: list[aiohttp.ClientSession] = []

    def make(address: str) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
        sessions.append(session)
        return session

    yield make
    await asyncio.gather(*(s.close() for s in sessions))


async def _register(http: aiohttp.ClientSession, base: str) -> aiohttp.ClientResponse:
    resp = await http.post(f"{base}/api/v1/auth/register",
                           json={"email": f"nginx-{random.getrandbits(48):x}@example.com",
                                 "password": "correct horse"})
    assert resp.status == 201, await resp.text()
    return resp


async def test_sync_and_rest_through_nginx_reach_both_instances(
        make_client, nginx_for, session_from):
    first, second = await make_client(), await make_client()
    proxy = nginx_for(first.server.port, second.server.port)
    base = proxy.http_url
    http = session_from(_loopback_address())
    resp = await _register(http, base)
    # No X-Request-ID of the client's: nginx's own (32 hex digits) reaches the server,
    # which answers with it, and nginx's log names the request by it.
    request_id = resp.headers["X-Request-ID"]
    assert re.fullmatch("[0-9a-f]{32}", request_id), request_id
    await eventually(lambda: f"request_id={request_id}" in proxy.access_log.read_text())
    user = (await resp.json())["data"]
    token = user["access_token"]
    ws = base.replace("http", "ws") + f"/sync/gym?token={token}"

    # nginx takes turns between its upstreams: two sockets, one on each instance.
    a = await YClient(http, ws).connect()
    b = await YClient(http, ws).connect()
    await a.wait_synced()
    await b.wait_synced()
    user_id = UUID(user["user"]["id"])
    assert [c.app[REGISTRY].connections_of(user_id) for c in (first, second)] == [1, 1]

    a.workouts()["w1"] = Map({"name": "squat", "sets": 5})
    b.weights()["d1"] = Map({"weight": 81.5})
    await eventually(lambda: "d1" in a.weights() and "w1" in b.workouts())
    # A client's own X-Request-ID goes through nginx and comes back.
    resp = await http.get(f"{base}/api/v1/docs/gym", headers={
        "Authorization": f"Bearer {token}", "X-Request-ID": "magni-7f3a.1"})
    assert resp.status == 200
    assert resp.headers["X-Request-ID"] == "magni-7f3a.1"
    # One the server would not take is replaced by nginx's, which the server keeps.
    resp = await http.get(f"{base}/health", headers={"X-Request-ID": "not <sane>"})
    assert re.fullmatch("[0-9a-f]{32}", resp.headers["X-Request-ID"])
    for conn in (a, b):
        await conn.disconnect()


async def test_each_client_keeps_its_own_address_behind_nginx(
        make_client, nginx_for, session_from):
    """With nginx's address trusted, the login limit counts the client nginx saw, on
    whichever instance it lands, and a client cannot pass for another by sending an
    X-Forwarded-For of its own."""
    limits = dict(rate_limit_auth="2/60", trusted_proxies=("127.0.0.1",))
    first, second = await make_client(**limits), await make_client(**limits)
    base = nginx_for(first.server.port, second.server.port).http_url
    # An email of its own: the wrong passwords count against it (the login backoff).
    login = {"email": f"nobody-{uuid.uuid4().hex[:10]}@example.com", "password": "wrong password"}
    me, other = session_from(_loopback_address()), session_from(_loopback_address())

    statuses = [(await me.post(f"{base}/api/v1/auth/login", json=login)).status
                for _ in range(2)]
    forged = await me.post(f"{base}/api/v1/auth/login", json=login,
                           headers={"X-Forwarded-For": _loopback_address()})
    assert statuses + [forged.status] == [401, 401, 429]
    assert (await forged.json())["error"]["code"] == "RATE_LIMITED"
    assert (await other.post(f"{base}/api/v1/auth/login", json=login)).status == 401


async def test_behind_a_tls_terminator_each_client_keeps_its_own_address(
        make_client, nginx_for, session_from):
    """The compose layout: a TLS terminator in front of nginx, so every request comes
    from its address. nginx believes its X-Forwarded-For, and only its: two clients
    behind it get a login limit each; one that reaches nginx directly cannot pass for
    others with an X-Forwarded-For of its own."""
    limits = dict(rate_limit_auth="2/60", trusted_proxies=("127.0.0.1",),
                  login_free_failures=1000)  # the per-IP limit is under test, not that
    terminator = _loopback_address()
    base = nginx_for((await make_client(**limits)).server.port,
                     terminator=terminator).http_url
    through, direct = session_from(terminator), session_from(_loopback_address())
    login = {"email": f"nobody-{random.getrandbits(48):x}@example.com",
             "password": "wrong password"}
    # From 198.18.0.0/15, which no other test uses: their login counters are this test's.
    a, b = (f"198.{random.randint(18, 19)}.{random.randint(0, 255)}.{host}"
            for host in random.sample(range(1, 255), 2))  # never the same address

    async def status(http: aiohttp.ClientSession, forwarded_for: str) -> int:
        resp = await http.post(f"{base}/api/v1/auth/login", json=login,
                               headers={"X-Forwarded-For": forwarded_for})
        return resp.status

    # What a client sent itself, left of what the terminator added, changes nothing; a
    # hop of the terminator's own address (two proxies on the host) is skipped.
    assert [await status(through, f) for f in (a, f"192.0.2.1, {a}", f"{a}, {terminator}")] \
        == [401, 401, 429]
    assert [await status(through, b) for _ in range(3)] == [401, 401, 429]
    forged = [await status(direct, f"192.0.2.{i}") for i in (3, 4, 5)]
    assert forged == [401, 401, 429]


async def test_the_servers_get_one_address_the_client_nginx_judged(
        aiohttp_server, nginx_for, session_from):
    """Whatever X-Forwarded-For a client sends, an instance gets only the address nginx
    settled on: the one the terminator names, or the peer's own."""
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Forwarded-For", ""))

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    upstream = await aiohttp_server(app)
    terminator, direct = _loopback_address(), _loopback_address()
    base = nginx_for(upstream.port, terminator=terminator).http_url
    seen = []
    for address, forwarded_for in ((terminator, "192.0.2.1, 198.51.100.7"),
                                   (direct, "192.0.2.1, 198.51.100.7")):
        for path in ("/api/v1/users/me", "/sync/gym"):
            resp = await session_from(address).get(f"{base}{path}",
                                                   headers={"X-Forwarded-For": forwarded_for})
            seen.append(await resp.text())
    assert seen == ["198.51.100.7"] * 2 + [direct] * 2


async def test_nginx_logs_no_token(make_client, nginx_for, session_from):
    """A token in a query (the sync endpoint's way) appears in none of nginx's logs: the
    access log has the path without the query, and the error log holds no message about
    requests (an instance that does not answer shows in the access log instead)."""
    proxy = nginx_for((await make_client()).server.port)
    base = proxy.http_url
    http = session_from(_loopback_address())
    token = (await (await _register(http, base)).json())["data"]["access_token"]
    conn = await YClient(http, base.replace("http", "ws") + f"/sync/gym?token={token}").connect()
    await conn.wait_synced()
    await conn.disconnect()
    rest = await http.get(f"{base}/api/v1/docs?token={token}",
                          headers={"Authorization": f"Bearer {token}"})
    assert rest.status == 200
    assert rest.headers["Server"] == "nginx"  # no version
    down = nginx_for(free_port())
    unavailable = await http.get(f"{down.http_url}/sync/gym?token={token}")
    assert unavailable.status == 503

    await eventually(lambda: '" 101 ' in proxy.access_log.read_text())  # once the socket closed
    await eventually(lambda: "upstream_status=502" in down.access_log.read_text())
    for log in (proxy.access_log, proxy.error_log, down.access_log, down.error_log):
        assert token not in log.read_text(), log.name
    assert '"GET /sync/gym HTTP/1.1" 101 ' in proxy.access_log.read_text()
    assert '"GET /api/v1/docs HTTP/1.1" 200 ' in proxy.access_log.read_text()


async def test_what_nginx_answers_itself_is_in_the_contract_envelope(
        make_client, nginx_for, session_from):
    """A body over nginx's limit, and an upstream that does not answer: JSON errors with
    the contract's codes and headers, not nginx's HTML pages."""
    http = session_from(_loopback_address())
    base = nginx_for((await make_client()).server.port).http_url
    body = io.BytesIO(bytes(13 * 1024 * 1024))  # over nginx's 12 MB
    too_large = await http.post(f"{base}/api/v1/auth/login", data=body,
                                headers={"Content-Type": "application/json"})
    nothing_there = free_port()
    down = await http.get(f"{nginx_for(nothing_there).http_url}/api/v1/users/me",
                          headers={"X-Request-ID": "magni-down.1"})
    for resp, status, code in ((too_large, 413, "PAYLOAD_TOO_LARGE"), (down, 503, "UNAVAILABLE")):
        assert resp.status == status
        assert resp.content_type == "application/json"
        assert (await resp.json())["error"]["code"] == code
        assert datetime.fromisoformat(resp.headers["X-Timestamp"]).utcoffset() is not None
    assert down.headers["X-Request-ID"] == "magni-down.1"
    assert int(down.headers["Retry-After"]) > 0


async def test_clients_of_a_stopped_instance_come_back_through_the_other(
        make_client, nginx_for, session_from):
    """A rolling restart: one instance stops; its client reconnects to the same address,
    nginx passes it to the other, and what it wrote meanwhile offline arrives."""
    first, second = await make_client(), await make_client()
    base = nginx_for(first.server.port, second.server.port).http_url
    http = session_from(_loopback_address())
    token = (await (await _register(http, base)).json())["data"]["access_token"]
    ws = base.replace("http", "ws") + f"/sync/gym?token={token}"
    clients = [await YClient(http, ws).connect() for _ in range(2)]  # one on each
    for conn in clients:
        await conn.wait_synced()

    await first.close()
    await eventually(lambda: any(c.close_code is not None for c in clients))
    moved, stayed = sorted(clients, key=lambda c: c.close_code is None)
    assert moved.close_code == 1001 and stayed.close_code is None
    moved.workouts()["offline"] = Map({"name": "row", "sets": 3})  # written while away
    await moved.connect()
    await moved.wait_synced()
    stayed.weights()["after"] = Map({"weight": 80.0})
    await eventually(lambda: "offline" in stayed.workouts() and "after" in moved.weights())
    fresh = await YClient(http, ws).connect()
    await fresh.wait_synced()
    assert fresh.workouts().to_py() == {"offline": {"name": "row", "sets": 3}}
    for conn in (moved, stayed, fresh):
        await conn.disconnect()


async def test_rest_requests_reuse_one_connection_to_the_instance(
        make_client, nginx_for, session_from):
    port = (await make_client()).server.port
    base = nginx_for(port).http_url
    http = session_from(_loopback_address())
    for _ in range(3):
        assert (await http.get(f"{base}/health")).status == 200
    to_instance = [c for c in psutil.net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    assert len(to_instance) == 1  # one kept open and reused, not one per request
