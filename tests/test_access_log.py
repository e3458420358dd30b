"""The server's access log, from a real ``modi-sync serve``: a line per request, its
parts as JSON fields, and never a token, neither the query's nor the header's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls
from .yclient import YClient, eventually


def _server(services: ServiceUrls, data_dir: Path, **env: str) -> ServerProcess:
    return ServerProcess(data_dir, dict(
        os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
        JWT_SECRET=JWT_SECRET, MODI_RATE_LIMIT_AUTH="100000/60",
        MODI_RATE_LIMIT_USER="100000/60", **env))


def _access_lines(server: ServerProcess) -> list[dict]:
    lines = [orjson.loads(line) for line in server.log_path.read_text().splitlines()
             if line.startswith("{")]
    return [line for line in lines if line["logger"] == "modi_sync.access"]


@pytest.fixture
def stopped() -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


async def _sync_and_rest(server: ServerProcess, http: aiohttp.ClientSession,
                         **headers: str) -> dict[str, Any]:
    """A websocket with ``?token=`` and a REST call with it in the query and the header."""
    await asyncio.to_thread(server.start)
    user = await asyncio.to_thread(server.register)
    token = user["access_token"]
    conn = await YClient(http, f"{server.ws_url}/sync/gym?token={token}").connect()
    await conn.wait_synced()
    await conn.disconnect()
    resp = await http.get(f"{server.http_url}/api/v1/docs?token={token}",
                          headers={"Authorization": f"Bearer {token}", **headers})
    assert resp.status == 200
    return user


async def test_json_logs_have_a_line_per_request_without_a_token(
        services, tmp_path, http, stopped):
    server = _server(services, tmp_path, MODI_LOG_FORMAT="json",
                     MODI_TRUSTED_PROXIES="127.0.0.1")  # MODI_ACCESS_LOG: auto, so on
    stopped.append(server)
    user = await _sync_and_rest(server, http, **{"X-Request-ID": "access-log.1",
                                                 "X-Forwarded-For": "198.51.100.7"})

    # The socket's line is written when it closes, a response's once it is sent: after
    # the client may have read it.
    await eventually(lambda: {101, 200} <= {line["status"] for line in _access_lines(server)
                                            if line["path"] in ("/sync/gym", "/api/v1/docs")})
    log = server.log_path.read_text()
    for secret in (user["access_token"], user["refresh_token"], "token=", "Bearer"):
        assert secret not in log
    lines = {(line["method"], line["path"], line["status"]): line
             for line in _access_lines(server)}
    socket = lines["GET", "/sync/gym", 101]
    rest = lines["GET", "/api/v1/docs", 200]
    assert ("POST", "/api/v1/auth/register", 201) in lines
    assert socket["client"] == "127.0.0.1"
    assert rest["client"] == "198.51.100.7"  # behind a trusted proxy: the client it names
    assert rest["request_id"] == "access-log.1"
    assert socket["request_id"] and socket["request_id"] != rest["request_id"]
    assert rest["bytes"] > 0
    assert rest["duration_ms"] >= 0
    assert rest["message"] == (f"GET /api/v1/docs 200 {rest['bytes']} B "
                               f"{rest['duration_ms']:.1f} ms client=198.51.100.7 "
                               f"request_id=access-log.1")


@pytest.mark.parametrize(("log_format", "access_log", "lines"), [
    ("text", "on", True),
    ("text", "auto", False),
    ("json", "off", False),
])
async def test_the_access_log_setting(services, tmp_path, http, stopped,
                                      log_format, access_log, lines):
    server = _server(services, tmp_path, MODI_LOG_FORMAT=log_format,
                     MODI_ACCESS_LOG=access_log)
    stopped.append(server)
    user = await _sync_and_rest(server, http)
    await asyncio.to_thread(server.stop)  # every line written
    log = server.log_path.read_text()
    assert ("modi_sync.access" in log and "GET /api/v1/docs 200 " in log) is lines
    assert (" GET /sync/gym 101 " in log) is lines
    assert user["access_token"] not in log


async def test_a_sync_connections_lines_name_its_document_and_connection(
        services, tmp_path, http, stopped):
    """A line logged while a socket's messages are handled says whose document and
    which connection, in whichever module it is written."""
    server = _server(services, tmp_path, MODI_LOG_FORMAT="json")
    stopped.append(server)
    await asyncio.to_thread(server.start)
    user = await asyncio.to_thread(server.register)
    conn = await YClient(http, f"{server.ws_url}/sync/gym?token={user['access_token']}"
                         ).connect()
    await conn.wait_synced()
    await conn.send_raw(b"\x00\x02\xff")  # an update message whose update is cut short
    assert await conn.wait_closed() == 1003

    def closing() -> list[dict]:
        lines = [orjson.loads(line) for line in server.log_path.read_text().splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line["message"].startswith("closing a connection")]

    await eventually(closing)
    (line,) = closing()
    assert line["doc"] == f"{user['user']['id']}/gym"
    assert len(line["conn"]) == 12 and int(line["conn"], 16) >= 0
