"""Outgoing frames: built once per message, written as is; slow readers dropped."""

from __future__ import annotations

import asyncio
import os
from uuid import UUID

import aiohttp
import pytest
from pycrdt import Map, Text

from modi_sync.app_keys import REGISTRY
from modi_sync.sync.connection import frame

from .conftest import register, ws_url
from .hostile import silent_socket
from .yclient import YClient, eventually, stays_false


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frame_header_follows_rfc_6455(size):
    message = os.urandom(size)
    data = frame(message)
    assert data[0] == 0x82  # FIN, binary, no RSV bits: no compression
    if size < 126:
        assert data[1] == size and data[2:] == message
    elif size < 65536:
        assert data[1] == 126 and int.from_bytes(data[2:4], "big") == size
        assert data[4:] == message
    else:
        assert data[1] == 127 and int.from_bytes(data[2:10], "big") == size
        assert data[10:] == message


async def test_a_client_that_stops_reading_is_dropped(make_client):
    client = await make_client(max_send_queue_bytes=256 * 1024, max_frame_bytes=8 << 20)
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    registry = client.server.app[REGISTRY]
    _, silent = await silent_socket(client, f"/sync/big?token={pair['access_token']}")
    await eventually(lambda: registry.connections_of(user_id) == 1)

    writer = await YClient(client.session, ws_url(client, "big", pair["access_token"])).connect()
    await writer.wait_synced()
    text = writer.doc.get("notes", type=Text)
    for _ in range(40):  # at most 40 MB in all: far past any socket buffer
        text += "x" * (1 << 20)
        if registry.connections_of(user_id) == 1:
            break  # the silent one is gone
        await asyncio.sleep(0.05)  # let the server write, so buffers fill
    await eventually(lambda: registry.connections_of(user_id) == 1)
    # The writer is still served and the server's copy is whole.
    room = registry.rooms[(user_id, "big")]
    text += "the end"
    await eventually(lambda: str(room.doc.get("notes", type=Text)) == str(text))
    assert writer.ws is not None and not writer.ws.closed
    silent.close()
    await writer.disconnect()


async def test_a_burst_of_opens_waits_for_pool_connections_instead_of_failing(make_client):
    # The smallest pools allowed: Redis 4 (2 held by subscriptions), PostgreSQL 4 (2 held
    # by the writer and the loader).
    client = await make_client(redis_pool_max=4, db_pool_max=4)
    pair = await register(client)

    async def open_one(i: int) -> int:
        ws = await client.session.ws_connect(ws_url(client, f"burst-{i}", pair["access_token"]))
        first = await ws.receive()  # the server's sync step 1: the handshake went through
        await ws.close()
        return first.type.value

    kinds = await asyncio.gather(*(open_one(i) for i in range(30)))
    assert kinds == [0x2] * 30  # every one got a binary message, none a 500


async def test_a_peer_that_answers_no_ping_is_dropped_and_a_live_one_stays(make_client):
    client = await make_client(keepalive_seconds=0.2)
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    registry = client.server.app[REGISTRY]
    # A raw socket that never reads, so never answers a ping; and a y-websocket client,
    # whose websocket library answers pings by itself.
    _, silent = await silent_socket(client, f"/sync/ka?token={pair['access_token']}")
    live = await YClient(client.session, ws_url(client, "ka", pair["access_token"])).connect()
    await live.wait_synced()
    assert registry.connections_of(user_id) == 2

    await eventually(lambda: registry.connections_of(user_id) == 1, timeout=5)
    assert live.ws is not None
    assert await stays_false(lambda: live.ws.closed, seconds=0.8)  # four sweeps
    live.workouts()["w1"] = Map({"name": "plank"})  # and it is still served
    room = registry.rooms[(user_id, "ka")]
    await eventually(lambda: "w1" in room.doc.get("workouts", type=Map))
    silent.close()
    await live.disconnect()


async def test_the_server_answers_a_clients_ping(client):
    pair = await register(client)
    ws = await client.session.ws_connect(ws_url(client, "pinged", pair["access_token"]),
                                         autoping=False)
    await ws.ping(b"are you there")
    while True:  # the sync step 1 and maybe more come first
        msg = await asyncio.wait_for(ws.receive(), 5)
        if msg.type is aiohttp.WSMsgType.PONG:
            break
    assert msg.data == b"are you there"
    await ws.close()
