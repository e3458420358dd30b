"""deploy/nginx.conf in front of two instances: sync and REST reach both, each client
keeps its own address for the rate limits, nginx's own errors are the contract's, and
the clients of an instance that stops come back through the other.

The nginx is a real one: ``MODI_TEST_NGINX`` or ``nginx`` on PATH (``.ci/run`` unpacks
Debian's). Without one these tests are skipped. The configuration is the deploy file
itself, with only its upstream, listen address and file paths changed for loopback.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import shutil
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from uuid import UUID

import aiohttp
import psutil
import pytest
from pycrdt import Map

from modi_sync.keys import REGISTRY

from .conftest import free_port
from .yclient import YClient, eventually

NGINX = os.environ.get("MODI_TEST_NGINX") or shutil.which("nginx")
DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"

pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx (set MODI_TEST_NGINX)")


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf no longer has exactly one {old!r}"
    return text.replace(old, new)


def _render(upstream_ports: list[int], port: int, run_dir: Path) -> str:
    """deploy/nginx.conf on loopback: its upstream and listen lines replaced, and nginx's
    own files (pid, logs, buffers) kept in ``run_dir``, in the foreground."""
    conf = DEPLOY_CONF.read_text()
    servers = " ".join(f"server 127.0.0.1:{p};" for p in upstream_ports)
    conf = _replace_once(conf, "server api:8080;", servers)
    conf = _replace_once(conf, "listen 80;", f"listen 127.0.0.1:{port};")
    temp = "".join(f"{kind}_temp_path {run_dir / kind};"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = _replace_once(conf, "/var/log/nginx/access.log", str(run_dir / "access.log"))
    conf = _replace_once(conf, "http {", f"http {{ {temp}")
    own = f"daemon off; master_process off; pid {run_dir / 'nginx.pid'}; " \
          f"error_log {run_dir / 'error.log'} warn;\n"
    return own + conf


@pytest.fixture
async def nginx_for(tmp_path: Path) -> AsyncIterator:
    """Start nginx in front of the servers on the given ports; return its base URL."""
    started: list[asyncio.subprocess.Process] = []

    async def start(*upstream_ports: int) -> str:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(_render(list(upstream_ports), port, tmp_path))
        proc = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf),
            stdin=asyncio.subprocess.DEVNULL)
        started.append(proc)
        await eventually(lambda: _listening(port) or proc.returncode is not None, timeout=10)
        assert proc.returncode is None, (tmp_path / "error.log").read_text()
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


async def test_sync_and_rest_through_nginx_reach_both_instances(
        make_client, nginx_for, session_from, tmp_path):
    first, second = await make_client(), await make_client()
    base = await nginx_for(first.server.port, second.server.port)
    http = session_from(_loopback_address())
    resp = await _register(http, base)
    # No X-Request-ID of the client's: nginx's own (32 hex digits) reaches the server,
    # which answers with it, and nginx's log names the request by it.
    request_id = resp.headers["X-Request-ID"]
    assert re.fullmatch("[0-9a-f]{32}", request_id), request_id
    await eventually(lambda: f"request_id={request_id}" in (tmp_path / "access.log").read_text())
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
    for conn in (a, b):
        await conn.disconnect()


async def test_each_client_keeps_its_own_address_behind_nginx(
        make_client, nginx_for, session_from):
    """With nginx's address trusted, the login limit counts the client nginx saw, on
    whichever instance it lands, and a client cannot pass for another by sending an
    X-Forwarded-For of its own."""
    limits = dict(rate_limit_auth="2/60", trusted_proxies=("127.0.0.1",))
    first, second = await make_client(**limits), await make_client(**limits)
    base = await nginx_for(first.server.port, second.server.port)
    login = {"email": "nobody@example.com", "password": "wrong password"}
    me, other = session_from(_loopback_address()), session_from(_loopback_address())

    statuses = [(await me.post(f"{base}/api/v1/auth/login", json=login)).status
                for _ in range(2)]
    forged = await me.post(f"{base}/api/v1/auth/login", json=login,
                           headers={"X-Forwarded-For": _loopback_address()})
    assert statuses + [forged.status] == [401, 401, 429]
    assert (await forged.json())["error"]["code"] == "RATE_LIMITED"
    assert (await other.post(f"{base}/api/v1/auth/login", json=login)).status == 401


async def test_what_nginx_answers_itself_is_in_the_contract_envelope(
        make_client, nginx_for, session_from):
    """A body over nginx's limit, and an upstream that does not answer: JSON errors with
    the contract's codes and headers, not nginx's HTML pages."""
    http = session_from(_loopback_address())
    base = await nginx_for((await make_client()).server.port)
    body = io.BytesIO(bytes(13 * 1024 * 1024))  # over nginx's 12 MB
    too_large = await http.post(f"{base}/api/v1/auth/login", data=body,
                                headers={"Content-Type": "application/json"})
    nothing_there = free_port()
    down = await http.get(f"{await nginx_for(nothing_there)}/api/v1/users/me",
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
    base = await nginx_for(first.server.port, second.server.port)
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


async def _register(http: aiohttp.ClientSession, base: str) -> aiohttp.ClientResponse:
    resp = await http.post(f"{base}/api/v1/auth/register",
                           json={"email": f"nginx-{random.getrandbits(48):x}@example.com",
                                 "password": "correct horse"})
    assert resp.status == 201, await resp.text()
    return resp


async def test_rest_requests_reuse_one_connection_to_the_instance(
        make_client, nginx_for, session_from):
    port = (await make_client()).server.port
    base = await nginx_for(port)
    http = session_from(_loopback_address())
    for _ in range(3):
        assert (await http.get(f"{base}/health")).status == 200
    to_instance = [c for c in psutil.net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    assert len(to_instance) == 1  # one kept open and reused, not one per request
