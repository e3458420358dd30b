"""Logout, password change and account deletion close the user's sockets (4401), everywhere."""

from __future__ import annotations

import asyncio

from .conftest import register, synced


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
