"""Logout, password change and account deletion close the user's sockets (4401), everywhere."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from .conftest import Client, register, synced
from .frozen_clock import one_instant  # noqa: F401 - a fixture
from .yclient import eventually


async def test_logout_closes_sockets_on_every_instance(make_client):
    first = await make_client()
    second = await make_client()  # another instance on the same PostgreSQL and Redis
    pair = await register(first)
    other_user = await register(first)
    here = await synced(first, pair["access_token"])
    there = await synced(second, pair["access_token"], "notes")
    bystander = await synced(second, other_user["access_token"])

    started = asyncio.get_running_loop().time()
    resp = await first.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert resp.status == 204
    codes = await asyncio.gather(here.wait_closed(timeout=1.0), there.wait_closed(timeout=1.0))
    assert codes == [4401, 4401]
    assert asyncio.get_running_loop().time() - started < 1.0
    assert bystander.ws is not None and not bystander.ws.closed
    await bystander.disconnect()


async def test_password_change_closes_sockets(client):
    pair = await register(client)
    conn = await synced(client, pair["access_token"])
    resp = await client.post(
        "/api/v1/auth/password",
        json={"current_password": "correct horse", "new_password": "battery staple"},
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    assert resp.status == 200
    assert await conn.wait_closed(timeout=1.0) == 4401


async def test_account_deletion_closes_sockets(client):
    pair = await register(client)
    conn = await synced(client, pair["access_token"])
    resp = await client.delete("/api/v1/auth/account", json={"password": "correct horse"},
                               headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert resp.status == 204
    assert await conn.wait_closed(timeout=1.0) == 4401


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refused(client: Client, token: str) -> bool:
    return (await client.get("/api/v1/docs", headers=_bearer(token))).status == 401


async def test_logout_refuses_the_sessions_access_token_on_every_instance(make_client):
    first, second = await make_client(), await make_client()
    pair = await register(first)
    token = pair["access_token"]
    assert not await _refused(second, token)  # the second instance now remembers it as live
    resp = await first.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert resp.status == 204
    assert await _refused(first, token)  # here: at once
    # There: on the sessions-ended message, well within the 2 s a kept state may live.
    started = asyncio.get_running_loop().time()
    await eventually(lambda: _refused(second, token), timeout=1.0)
    assert asyncio.get_running_loop().time() - started < 1.0
    upgrade = await second.get(f"/sync/default?token={token}")
    assert upgrade.status == 401


async def test_refresh_token_reuse_closes_the_thiefs_sockets_on_every_instance(make_client):
    first, second = await make_client(), await make_client()
    pair = await register(first)
    # The thief refreshed first with a stolen token; the owner then presents it again.
    stolen = await first.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    thief = (await stolen.json())["data"]
    thief_socket = await synced(second, thief["access_token"])
    reuse = await first.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert reuse.status == 401
    assert await thief_socket.wait_closed(timeout=1.0) == 4401
    await eventually(lambda: _refused(second, thief["access_token"]), timeout=1.0)
    assert (await second.get(f"/sync/default?token={thief['access_token']}")).status == 401


@pytest.mark.usefixtures("one_instant")
async def test_a_deleted_users_token_opens_no_document_on_any_instance(make_client, db):
    first, second = await make_client(), await make_client()
    pair = await register(first)
    token = pair["access_token"]
    assert not await _refused(second, token)
    resp = await first.delete("/api/v1/auth/account", json={"password": "correct horse"},
                              headers=_bearer(token))
    assert resp.status == 204
    await eventually(lambda: _refused(second, token), timeout=1.0)
    for client in (first, second):
        assert (await client.get(f"/sync/new-doc?token={token}")).status == 401
    assert await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1",
                             UUID(pair["user"]["id"])) == 0
