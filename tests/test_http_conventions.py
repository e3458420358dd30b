"""The HTTP conventions (docs/api.md): one error envelope, request ids, timestamps, CORS,
body limits."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping

from aiohttp import web

from modi_sync.app import create_app

from .conftest import register, ws_url

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _is_envelope(body: dict, code: str) -> bool:
    error = body.get("error", {})
    return set(error) == {"code", "message", "details"} and error["code"] == code


async def test_unknown_route_is_404_in_the_envelope(client):
    resp = await client.get("/api/v1/nothing-here")
    assert resp.status == 404
    assert _is_envelope(await resp.json(), "NOT_FOUND")
    assert resp.headers["X-Request-ID"]


async def test_wrong_method_is_405_in_the_envelope(client):
    resp = await client.get("/api/v1/auth/login")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "VALIDATION_ERROR"
    assert "POST" in resp.headers["Allow"]


async def test_oversized_body_is_413(make_client):
    client = await make_client(max_body_bytes=1024)
    resp = await client.post("/api/v1/auth/login", data=b"{" + b" " * 4096 + b"}",
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert _is_envelope(await resp.json(), "PAYLOAD_TOO_LARGE")


async def test_wrong_content_type_is_415(client):
    resp = await client.post("/api/v1/auth/login", data="email=a", headers={
        "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    assert _is_envelope(await resp.json(), "UNSUPPORTED_MEDIA_TYPE")


async def test_validation_error_names_the_field(client):
    resp = await client.post("/api/v1/auth/register", json={"email": "a@example.com",
                                                            "password": "short"})
    assert resp.status == 400
    body = await resp.json()
    assert _is_envelope(body, "VALIDATION_ERROR")
    assert body["error"]["details"]["field"] == "password"


async def test_unexpected_errors_are_internal_and_logged_with_the_request_id(
        aiohttp_client, settings, caplog):
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail: password=hunter2")

    app = create_app(settings)
    app.router.add_get("/boom", boom)  # a route that fails unexpectedly
    client = await aiohttp_client(app)
    request_id = f"req-{uuid.uuid4().hex}"
    resp = await client.get("/boom", headers={"X-Request-ID": request_id})
    text = await resp.text()
    assert resp.status == 500
    assert _is_envelope(await resp.json(), "INTERNAL")
    assert "hunter2" not in text and "Traceback" not in text
    assert resp.headers["X-Request-ID"] == request_id
    logged = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    assert logged and logged[0].exc_info is not None


async def test_every_response_has_request_id_and_timestamp(client):
    pair = await register(client)
    resp = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    assert _TIMESTAMP.fullmatch(resp.headers["X-Timestamp"])
    insane = await client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert uuid.UUID(insane.headers["X-Request-ID"])
    ws = await client.session.ws_connect(ws_url(client, "default", pair["access_token"]))
    assert uuid.UUID(ws._response.headers["X-Request-ID"])
    assert _TIMESTAMP.fullmatch(ws._response.headers["X-Timestamp"])
    await ws.close()


async def test_cors_only_for_configured_origins(make_client):
    client = await make_client(cors_origins=("https://app.magni.example",))
    allowed = await client.options("/api/v1/auth/login", headers={
        "Origin": "https://app.magni.example", "Access-Control-Request-Method": "POST"})
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.magni.example"
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    simple = await client.get("/health", headers={"Origin": "https://app.magni.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://app.magni.example"
    other = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await client.options("/api/v1/auth/login", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in preflight.headers


def _assert_hardened(headers: Mapping[str, str]) -> None:
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Server"] == "modi-sync"  # no aiohttp, no Python, no versions


async def test_every_response_is_nosniff_and_names_no_versions(client):
    pair = await register(client)
    responses = [
        await client.get("/health"),
        await client.get("/api/v1/nothing-here"),  # aiohttp's 404, in our envelope
        await client.get("/api/v1/docs"),  # 401
        await client.post("/api/v1/auth/login", data=b"{", headers={
            "Content-Type": "application/json"}),  # 400
    ]
    assert [r.status for r in responses] == [200, 404, 401, 400]
    for resp in responses:
        _assert_hardened(resp.headers)
    ws = await client.session.ws_connect(ws_url(client, "default", pair["access_token"]))
    assert ws._response.status == 101
    _assert_hardened(ws._response.headers)
    await ws.close()


async def test_every_token_response_is_no_store(client):
    pair = await register(client)
    refreshed = await client.post("/api/v1/auth/refresh",
                                  json={"refresh_token": pair["refresh_token"]})
    changed = await client.post(
        "/api/v1/auth/password",
        json={"current_password": "correct horse", "new_password": "battery staple"},
        headers={"Authorization": f"Bearer {(await refreshed.json())['data']['access_token']}"})
    for resp in (refreshed, changed):
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"


async def test_a_request_aiohttp_cannot_parse_names_no_versions_either(client):
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n")
    await writer.drain()
    head = (await reader.read(4096)).decode("latin-1")
    writer.close()
    assert head.split("\r\n")[0].endswith(" 400 Bad Request")
    assert "\r\nServer: modi-sync\r\n" in head
    assert "aiohttp" not in head and "Python" not in head
