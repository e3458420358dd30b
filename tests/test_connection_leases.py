"""The per-user connection limit holds across instances, and a crashed instance's
sockets stop counting once their leases end."""

from __future__ import annotations

import asyncio
import uuid

from storage.connection_leases import ConnectionLeases

from .conftest import Client, register, synced, ws_url
from .yclient import YClient, eventually


async def _close_code(client: Client, token: str) -> int | None:
    ws = await client.session.ws_connect(ws_url(client, "default", token))
    await ws.receive()
    return ws.close_code


async def test_the_limit_counts_the_users_sockets_on_every_instance(make_client):
    first = await make_client(max_connections_per_user=2)
    second = await make_client(max_connections_per_user=2)
    user, other = await register(first), await register(first)
    token = user["access_token"]
    here = await synced(first, token)
    there = await synced(second, token)
    assert await _close_code(first, token) == 1008  # one here, but two in all
    o = await synced(first, other["access_token"])  # another user's count is theirs

    await there.disconnect()  # its place is free at once, on every instance
    again = await synced(first, token)
    assert not again.ws.closed
    for conn in (here, again, o):
        await conn.disconnect()


async def test_a_dead_instances_sockets_free_their_places_when_their_leases_end(
        make_client, redis):
    client = await make_client(max_connections_per_user=2)
    user = await register(client)
    user_id = uuid.UUID(user["user"]["id"])
    dead = ConnectionLeases(redis, uuid.uuid4(), limit=2, lease_seconds=1.0)
    assert await dead.take(user_id, "a") and await dead.take(user_id, "b")
    # The instance holding them dies: nothing renews them.
    assert await _close_code(client, user["access_token"]) == 1008

    async def admitted() -> bool:
        conn = await YClient(client.session, ws_url(client, "default", user["access_token"])
                             ).connect()
        try:
            await conn.wait_synced(timeout=2)
            return True
        except TimeoutError:
            return False
        finally:
            await conn.disconnect()

    await eventually(admitted, timeout=5)


async def test_leases_held_by_a_live_instance_are_renewed_past_their_length(redis):
    user_id = uuid.uuid4()
    live = ConnectionLeases(redis, uuid.uuid4(), limit=1, lease_seconds=0.3)
    other = ConnectionLeases(redis, uuid.uuid4(), limit=1, lease_seconds=0.3)
    assert await live.take(user_id, "a")
    live.start()  # renews every 0.1 s
    try:
        for _ in range(6):  # 0.6 s: twice the lease
            assert not await other.take(user_id, "b")
            await asyncio.sleep(0.1)  # time passing is the point: leases end by it
    finally:
        await live.stop()
    await live.give_back(user_id, "a")
    assert await other.take(user_id, "b")
    await other.give_back(user_id, "b")
