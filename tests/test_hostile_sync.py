"""One signed-up user must not stall, bloat or outlive the server through its sync socket.

Each test is one attack of issue 19 against the real app (embedded PostgreSQL and
Redis): the limit is hit, and the client gets the close code docs/security.md names.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from pycrdt import (
    Awareness,
    Doc,
    Map,
    Text,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    write_var_uint,
)

from modi_sync.app_keys import REGISTRY
from modi_sync.sync.protocol import sync_step1_message

from .conftest import Client, register, synced
from .hostile import LagMonitor, silent_socket
from .test_sync_websocket import close_code_of, raw_peer, stored_rows
from .yclient import eventually, stays_false


def masked(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client's final websocket frame (RFC 6455 5.2: clients mask)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = os.urandom(4)
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(
        (key * (size // 4 + 1))[:size], "big")).to_bytes(size, "big") if size else b""
    return header + key + body


@pytest.fixture
async def user(client: Client) -> dict[str, Any]:
    return await register(client)


def _pending_updates(size: int, count: int) -> list[bytes]:
    """``count`` updates of about ``size`` bytes that all build on one never sent."""
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    notes = doc.get("notes", type=Text)
    notes += "the first edit, withheld"
    for _ in range(count):
        notes += "x" * size
    return updates[1:]


# -- 1. one frame must not freeze the loop ------------------------------------------


FRAME_LIMIT = (4 << 20) - 1  # the largest frame under the default max_frame_bytes


@pytest.mark.parametrize("frame", [
    pytest.param(b"\xff" * FRAME_LIMIT, id="4MiB-of-ff"),
    pytest.param(b"\x00" + b"\xff" * (FRAME_LIMIT - 1), id="sync-type-of-4MiB"),
    pytest.param(b"\x00\x02" + b"\xff" * (FRAME_LIMIT - 2), id="length-prefix-of-4MiB"),
    pytest.param(b"\xff" * 2500 + b"\x01", id="type-of-2500-bytes"),
    pytest.param(b"\x01" + write_var_uint(FRAME_LIMIT - 8) + b"\xff" * (FRAME_LIMIT - 8),
                 id="awareness-of-ff"),
])
async def test_a_malformed_frame_is_refused_in_milliseconds(client, user, frame):
    ws = await raw_peer(client, user)
    async with LagMonitor() as lag:
        await ws.send_bytes(frame)
        assert await close_code_of(ws) == 1003
    # Before the bounded reader, the 4 MiB frames held the loop for minutes.
    assert lag.worst < 0.05, lag.report()


# -- 2. bursts: bounded buffers, one reply in flight, yield, rate limit -----------------


async def test_a_burst_of_step1_frames_leaves_one_reply_in_flight(make_client):
    client = await make_client(ws_message_limit="100000/1")
    pair = await register(client)
    registry = client.server.app[REGISTRY]
    writer = await synced(client, pair["access_token"])
    writer.doc.get("notes", type=Text).insert(0, "x" * 200_000)
    key = (UUID(pair["user"]["id"]), "default")
    await eventually(lambda: key in registry.rooms
                     and len(str(registry.rooms[key].doc.get("notes", type=Text))) == 200_000)

    _, attacker = await silent_socket(client, f"/sync/default?token={pair['access_token']}")
    attacker.write(masked(sync_step1_message(b"\x00")) * 300)  # 300 requests for 200 kB each
    await attacker.drain()
    room = registry.rooms[key]
    conn = next(c for c in room.connections if c.ws is not writer)

    def buffered() -> int:
        transport = conn._transport
        return (transport.get_write_buffer_size() if transport else 0) + conn._queued

    # The socket's kernel buffers take a few replies; the server holds at most one more.
    assert await stays_false(lambda: buffered() > 2 * 200_000 + (64 << 10), seconds=1.0)
    # Others are still served meanwhile.
    other = await synced(client, pair["access_token"])
    assert len(str(other.doc.get("notes", type=Text))) == 200_000
    attacker.close()
    await other.disconnect()
    await writer.disconnect()


async def test_a_connection_past_its_send_budget_is_dropped(make_client):
    client = await make_client(max_send_queue_bytes=128 << 10, ws_message_limit="100000/1")
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    registry = client.server.app[REGISTRY]
    writer = await synced(client, pair["access_token"])
    writer.doc.get("notes", type=Text).insert(0, "x" * 300_000)  # a reply over the budget
    await eventually(lambda: writer.received_updates == 0 and registry.connections_of(user_id) == 1)

    _, attacker = await silent_socket(client, f"/sync/default?token={pair['access_token']}")
    attacker.write(masked(sync_step1_message(b"\x00")) * 20)
    await attacker.drain()
    await eventually(lambda: registry.connections_of(user_id) == 1)  # dropped, not buffered
    assert not writer.ws.closed
    attacker.close()
    await writer.disconnect()


async def test_too_many_messages_close_the_connection_1013(make_client):
    client = await make_client(ws_message_limit="20/60")
    pair = await register(client)
    ws = await raw_peer(client, pair)
    awareness = Awareness(Doc())
    for i in range(25):
        awareness.set_local_state({"n": i})
        payload = awareness.encode_awareness_update([awareness.client_id])
        await ws.send_bytes(create_awareness_message(payload))
    assert await close_code_of(ws) == 1013
    assert ws.close_code == 1013


async def test_a_burst_of_updates_lets_the_loop_serve_others_between_messages(client, user):
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    workouts = doc.get("workouts", type=Map)
    for i in range(800):
        workouts[f"w{i}"] = Map({"name": "squat", "sets": i})
    ws = await raw_peer(client, user)
    async with LagMonitor(tick=0.001) as lag:
        for update in updates:  # all at once: the server reads them in a few chunks
            ws._writer.transport.write(masked(create_update_message(update)))  # noqa: SLF001
        watcher = await synced(client, user["access_token"])
        await eventually(lambda: len(watcher.workouts()) == 800)
    assert lag.worst < 0.02, lag.report()
    await watcher.disconnect()
    await ws.close()


# -- 3. awareness ---------------------------------------------------------------------


def _awareness_for(ids: list[int], state: str) -> bytes:
    payload = write_var_uint(len(ids)) + b"".join(
        write_var_uint(i) + write_var_uint(1) + write_var_uint(len(state)) + state.encode()
        for i in ids)
    return create_awareness_message(payload)


async def test_awareness_for_too_many_clients_closes_1008_and_keeps_nothing(client, user):
    ws = await raw_peer(client, user)
    await ws.send_bytes(_awareness_for(list(range(1, 200_000)), '{"a":1}'))  # 2.4 MB
    assert await close_code_of(ws) == 1008
    room = client.server.app[REGISTRY].rooms.get((UUID(user["user"]["id"]), "default"))
    assert room is None or room.awareness.meta.keys() <= {room.awareness.client_id}


async def test_awareness_ids_add_up_per_connection(client, user):
    ws = await raw_peer(client, user)
    for first in range(0, 12, 3):  # three new ids a message: the ninth passes the cap
        await ws.send_bytes(_awareness_for([first + 1, first + 2, first + 3], '{"a":1}'))
    assert await close_code_of(ws) == 1008


async def test_awareness_state_over_its_size_closes_1009(client, user):
    ws = await raw_peer(client, user)
    await ws.send_bytes(_awareness_for([7], '{"name":"' + "x" * (70 << 10) + '"}'))
    assert await close_code_of(ws) == 1009


async def test_a_connections_awareness_ids_and_clocks_go_when_it_leaves(client, user):
    registry = client.server.app[REGISTRY]
    keeper = await synced(client, user["access_token"])
    ws = await raw_peer(client, user)
    await ws.send_bytes(_awareness_for([11, 12], '{"user":"x"}'))
    await ws.send_bytes(_awareness_for([13], "null"))  # a removal: pycrdt keeps a clock
    room = registry.rooms[(UUID(user["user"]["id"]), "default")]
    await eventually(lambda: {11, 12, 13} <= room.awareness.meta.keys())
    await ws.close()
    await eventually(lambda: not {11, 12, 13} & room.awareness.meta.keys())
    assert not {11, 12} & room.awareness.states.keys()
    await keeper.disconnect()


# -- 4. updates that never integrate ----------------------------------------------------


async def test_updates_that_never_integrate_close_1008_and_leave_memory(client, db, user):
    registry = client.server.app[REGISTRY]
    key = (UUID(user["user"]["id"]), "default")
    keeper = await synced(client, user["access_token"])
    ws = await raw_peer(client, user)
    for update in _pending_updates(200_000, 8):  # 1.6 MB waiting, past the 1 MiB budget
        if ws.closed:
            break
        await ws.send_bytes(create_update_message(update))
    assert await close_code_of(ws) == 1008
    assert await keeper.wait_closed() == 1011  # the room reloads: yrs cannot drop them
    assert key not in registry.rooms or registry.rooms[key].connections == set()
    assert await stored_rows(db, user["user"]["id"], "default") == []


async def test_deletions_of_unknown_items_count_as_waiting(make_client, db):
    client = await make_client(max_pending_bytes=4096)
    pair = await register(client)
    ws = await raw_peer(client, pair)
    source = Doc()
    text = source.get("notes", type=Text)
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    text += "y" * 2000
    for i in range(0, 1800, 2):  # 900 deletions of items the server never got
        del text[i // 2:i // 2 + 1]
    for update in updates[1:]:
        if ws.closed:
            break
        await ws.send_bytes(create_update_message(update))
    assert await close_code_of(ws) == 1008
    assert await stored_rows(db, pair["user"]["id"], "default") == []


async def test_an_update_that_waits_briefly_integrates_and_nothing_closes(client, db, user):
    doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    workouts = doc.get("workouts", type=Map)
    workouts["w1"] = Map({"name": "squat"})
    workouts["w1"]["sets"] = 5  # builds on the first
    peer = await synced(client, user["access_token"])
    ws = await raw_peer(client, user)
    await ws.send_bytes(create_update_message(updates[1]))  # its dependency comes next
    await ws.send_bytes(create_update_message(updates[0]))
    await eventually(lambda: peer.workouts().to_py() == {"w1": {"name": "squat", "sets": 5.0}})
    assert not ws.closed
    room = client.server.app[REGISTRY].rooms[(UUID(user["user"]["id"]), "default")]
    assert room._pending == []  # noqa: SLF001 - nothing is counted as waiting any more
    await ws.close()
    await peer.disconnect()


# -- 5. quotas ------------------------------------------------------------------------


async def test_the_documents_quota_closes_1009_and_stores_nothing(make_client, db):
    client = await make_client(max_documents_per_user=2)
    pair = await register(client)
    for name in ("one", "two"):
        y = await synced(client, pair["access_token"], name)
        y.workouts()["w"] = Map({"sets": 1})
        await eventually(lambda n=name: _rows(db, pair, n))
        await y.disconnect()
    third = await synced(client, pair["access_token"], "three")
    third.workouts()["w"] = Map({"sets": 1})
    assert await third.wait_closed() == 1009
    assert await stored_rows(db, pair["user"]["id"], "three") == []


async def test_the_bytes_quota_closes_1009(make_client, db):
    client = await make_client(max_user_bytes=20_000)
    pair = await register(client)
    first = await synced(client, pair["access_token"], "first")
    first.doc.get("notes", type=Text).insert(0, "x" * 15_000)
    await eventually(lambda: _rows(db, pair, "first"))
    await first.disconnect()
    second = await synced(client, pair["access_token"], "second")
    second.doc.get("notes", type=Text).insert(0, "y" * 8_000)
    assert await second.wait_closed() == 1009
    assert await stored_rows(db, pair["user"]["id"], "second") == []


async def _rows(db: asyncpg.Connection, pair: dict[str, Any], name: str) -> bool:
    return bool(await stored_rows(db, pair["user"]["id"], name))


# -- an oversized frame is told, not reset ----------------------------------------------


async def test_a_frame_far_over_the_limit_is_answered_1009_not_reset(make_client):
    client = await make_client(max_frame_bytes=64 << 10)
    pair = await register(client)
    ws = await raw_peer(client, pair)
    await ws.send_bytes(b"\x00\x02" + b"\x01" * (32 << 20))  # 32 MiB: still being sent
    assert await close_code_of(ws, timeout=20) == 1009


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_the_sync_step1_of_a_fresh_client_still_works_after_the_limits(client, user):
    """A well-behaved client is untouched by every limit above."""
    a = await synced(client, user["access_token"])
    b = await synced(client, user["access_token"])
    await a.send_awareness({"user": {"name": "a"}})
    a.workouts()["w1"] = Map({"name": "squat", "sets": 5})
    await eventually(lambda: "w1" in b.workouts() and a.awareness.client_id
                     in b.awareness.states)
    await a.send_raw(create_sync_message(a.doc))  # a resync: step 1 again
    assert await stays_false(lambda: a.ws.closed, seconds=0.3)
    await a.disconnect()
    await b.disconnect()


async def test_the_quotas_answer_413_over_http(make_client):
    client = await make_client(max_documents_per_user=1)
    pair = await register(client)
    headers = {"Authorization": f"Bearer {pair['access_token']}",
               "Content-Type": "application/octet-stream"}
    doc = Doc()
    doc.get("workouts", type=Map)["w"] = Map({"sets": 1})
    first = await client.post("/api/v1/docs/one/update", data=doc.get_update(), headers=headers)
    assert first.status == 200
    second = await client.post("/api/v1/docs/two/update", data=doc.get_update(), headers=headers)
    assert second.status == 413
    assert (await second.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert (await client.get("/api/v1/docs/two", headers=headers)).status == 404
