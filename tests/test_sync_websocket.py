"""The websocket endpoint over real sockets: convergence, durability, limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import jwt
import pytest
from pycrdt import (
    Doc,
    Map,
    Text,
    YMessageType,
    YSyncMessageType,
    create_update_message,
)

from modi_sync.app_keys import REGISTRY
from modi_sync.sync.protocol import parse_message

from .conftest import JWT_SECRET, Client, register, synced, ws_url
from .yclient import YClient, eventually, stays_false

ROOTS = ("workouts", "weights", "food_logs", "favorites")


# -- helpers --------------------------------------------------------------------------


async def stored_rows(db: asyncpg.Connection, user_id: str, name: str) -> list[bytes]:
    records = await db.fetch(
        "SELECT u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = $2 ORDER BY u.seq",
        UUID(user_id), name,
    )
    return [r["data"] for r in records]


def roots(doc: Doc) -> dict:
    return {name: doc.get(name, type=Map).to_py() for name in ROOTS}


def merged(rows: list[bytes]) -> Doc:
    doc = Doc()
    for row in rows:
        doc.apply_update(row)
    return doc


@contextlib.asynccontextmanager
async def doc_updates_locked(db: asyncpg.Connection) -> AsyncIterator[None]:
    """PostgreSQL's own lock on doc_updates: reads go on, the server's INSERT waits."""
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute("LOCK TABLE doc_updates IN EXCLUSIVE MODE")
        yield
    finally:
        await tx.rollback()


async def insert_is_waiting(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE relation = 'doc_updates'::regclass AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))


async def connected(client: Client, user: dict[str, Any], name: str = "default") -> YClient:
    return await synced(client, user["access_token"], name)


async def close_code_of(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> int | None:
    """Read until the server closes; the close code it sent."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return ws.close_code


async def raw_peer(client: Client, user: dict[str, Any],
                   name: str = "default") -> aiohttp.ClientWebSocketResponse:
    """A bare socket in the room: returns once the server's step 1 shows it joined."""
    ws = await client.session.ws_connect(ws_url(client, name, user["access_token"]))
    msg = await asyncio.wait_for(ws.receive(), 10)
    message = parse_message(msg.data)
    assert (message.type, message.sync_type) == (YMessageType.SYNC, YSyncMessageType.SYNC_STEP1)
    return ws


def user_key(user: dict, name: str = "default") -> tuple[UUID, str]:
    return UUID(user["user"]["id"]), name


# -- convergence ----------------------------------------------------------------------


async def test_two_devices_converge(client):
    user = await register(client)
    url = ws_url(client, "default", user["access_token"])
    a = await YClient(client.session, url).connect()
    b = await YClient(client.session, url).connect()
    await a.wait_synced()
    await b.wait_synced()

    a.workouts()["w1"] = Map({"name": "squat", "sets": 5, "reps": 5, "weight": 100.0})
    b.weights()["x1"] = Map({"weight": 80.5, "date_time": "2026-11-23T08:00:00Z"})

    await eventually(lambda: "x1" in a.weights() and "w1" in b.workouts())
    assert a.workouts().to_py() == b.workouts().to_py()
    assert a.weights().to_py() == b.weights().to_py()
    await a.disconnect()
    await b.disconnect()


async def test_offline_edits_converge_on_reconnect(client, db):
    user = await register(client)
    a, b = await connected(client, user), await connected(client, user)
    a.workouts()["w1"] = Map({"name": "squat", "sets": 5})
    await eventually(lambda: "w1" in b.workouts())

    await a.disconnect()
    a.workouts()["w2"] = Map({"name": "deadlift", "sets": 1})  # offline
    del a.workouts()["w1"]  # offline delete
    b.weights()["x1"] = Map({"weight": 80.0, "date_time": "2026-01-01T08:00:00Z"})
    b.workouts()["w1"]["sets"] = 6  # concurrent with a's delete
    await eventually(lambda: _stored_equals(db, user, b.doc))
    assert "w2" not in b.workouts()

    await a.connect()
    await a.wait_synced()
    await eventually(lambda: roots(a.doc) == roots(b.doc) and "w2" in b.workouts()
                     and "x1" in a.weights())
    assert "w1" not in a.workouts()  # the delete wins over the nested edit
    # What is stored is what both hold.
    await eventually(lambda: _stored_equals(db, user, a.doc))
    await a.disconnect()
    await b.disconnect()


async def _stored_equals(db: asyncpg.Connection, user: dict, doc: Doc) -> bool:
    return roots(merged(await stored_rows(db, user["user"]["id"], "default"))) == roots(doc)


async def test_another_user_cannot_see_a_document_of_the_same_name(client, db):
    alice, mallory = await register(client), await register(client)
    a = await connected(client, alice)
    a.workouts()["secret"] = Map({"notes": "alice only"})
    await eventually(lambda: _stored_equals(db, alice, a.doc))

    m = await connected(client, mallory)  # the same name, "default"
    assert roots(m.doc) == {name: {} for name in ROOTS}
    m.workouts()["m1"] = Map({"notes": "mallory"})
    await eventually(lambda: _stored_equals(db, mallory, m.doc))

    # Nothing crossed either way, in memory or in storage.
    assert "m1" not in a.workouts() and a.received_updates == 0
    alice_rows = await stored_rows(db, alice["user"]["id"], "default")
    assert "m1" not in roots(merged(alice_rows))["workouts"]
    ids = await db.fetch("SELECT id FROM documents WHERE name = 'default' AND user_id = ANY($1)",
                         [UUID(alice["user"]["id"]), UUID(mallory["user"]["id"])])
    assert len(ids) == 2
    await a.disconnect()
    await m.disconnect()


async def test_server_restart_and_a_fresh_client_gets_everything(make_client, db, http):
    first = await make_client()
    user = await register(first)
    url = ws_url(first, "default", user["access_token"])
    # Their own session: closing the test client must not be what closes them.
    a, b = YClient(http, url), YClient(http, url)
    for y in (a, b):
        await y.connect()
        await y.wait_synced()
    a.workouts()["w1"] = Map({"name": "squat", "sets": 5})
    a.doc.get("notes", type=Text).insert(0, "hello")
    b.weights()["x1"] = Map({"weight": 81.0, "date_time": "2026-01-01T08:00:00Z"})
    await eventually(lambda: "x1" in a.weights() and "w1" in b.workouts())

    await first.close()  # the app stops: sockets closed as "going away"
    assert await a.wait_closed() == 1001
    assert await b.wait_closed() == 1001
    a.workouts()["w2"] = Map({"name": "offline while the server was down"})

    second = await make_client()
    fresh = await connected(second, user)
    assert fresh.workouts().to_py() == {"w1": {"name": "squat", "sets": 5.0}}
    assert fresh.weights().to_py() == b.weights().to_py()
    assert str(fresh.doc.get("notes", type=Text)) == "hello"

    a.url = ws_url(second, "default", user["access_token"])
    await a.connect()
    await a.wait_synced()
    await eventually(lambda: "w2" in fresh.workouts())
    assert roots(fresh.doc) == roots(a.doc)
    await a.disconnect()
    await fresh.disconnect()


# -- durability: stored before it is sent ---------------------------------------------


async def test_an_update_reaches_no_one_before_it_is_stored(client, db, services):
    user = await register(client)
    a, b = await connected(client, user), await connected(client, user)
    locker = await asyncpg.connect(services.database_url)
    try:
        async with doc_updates_locked(locker):
            a.workouts()["w1"] = Map({"name": "squat"})
            await eventually(lambda: insert_is_waiting(locker))
            # The update is applied in the server's memory, but not stored: no fan-out.
            assert await stays_false(lambda: b.received_updates > 0)
            assert "w1" not in b.workouts()
            assert await stored_rows(locker, user["user"]["id"], "default") == []
        await eventually(lambda: "w1" in b.workouts())
        assert "w1" in roots(merged(await stored_rows(db, user["user"]["id"], "default")))[
            "workouts"]
    finally:
        await locker.close()
    await a.disconnect()
    await b.disconnect()


async def test_every_update_a_peer_receives_is_already_stored(client, db):
    user = await register(client)
    a = await connected(client, user)
    b = await raw_peer(client, user)
    received = Doc()

    async def check_each_received_update() -> None:
        while len(received.get("workouts", type=Map)) < 40:
            msg = await b.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            message = parse_message(msg.data)
            if message.sync_type == YSyncMessageType.SYNC_UPDATE:
                # At the moment it arrives, everything in it is in stored rows.
                stored = merged(await stored_rows(db, user["user"]["id"], "default"))
                before = stored.get_state()
                stored.apply_update(message.payload)
                assert stored.get_state() == before
                received.apply_update(message.payload)

    reader = asyncio.ensure_future(check_each_received_update())
    for i in range(40):
        a.workouts()[f"w{i}"] = Map({"sets": i})
        if i % 7 == 0:
            await asyncio.sleep(0)  # some alone, some in a group commit
    await asyncio.wait_for(reader, 20)
    assert received.get("workouts", type=Map).to_py() == a.workouts().to_py()
    await b.close()
    await a.disconnect()


async def test_sync_step1_while_updates_are_pending_gets_the_full_state(client, db, services):
    user = await register(client)
    a = await connected(client, user)
    a.workouts()["w0"] = Map({"sets": 0})
    await eventually(lambda: _stored_equals(db, user, a.doc))
    locker = await asyncpg.connect(services.database_url)
    try:
        async with doc_updates_locked(locker):
            a.workouts()["w1"] = Map({"sets": 1})
            a.weights()["x1"] = Map({"weight": 70.0})
            await eventually(lambda: insert_is_waiting(locker))
            late = await YClient(
                client.session, ws_url(client, "default", user["access_token"])
            ).connect()
            # Its step 2 would hold updates not stored yet: it waits for them.
            assert await stays_false(late.synced.is_set)
            assert "w1" not in late.workouts()
        await late.wait_synced()
        await eventually(lambda: roots(late.doc) == roots(a.doc))
        assert set(late.workouts()) == {"w0", "w1"} and "x1" in late.weights()
        assert roots(merged(await stored_rows(db, user["user"]["id"], "default"))) == roots(a.doc)
    finally:
        await locker.close()
    await late.disconnect()
    await a.disconnect()


async def test_many_clients_joining_during_a_burst_all_converge(client, db):
    user = await register(client)
    writer = await connected(client, user)
    joiners: list[YClient] = []
    for i in range(30):
        writer.workouts()[f"w{i}"] = Map({"sets": i})
        if i % 5 == 0:
            joiners.append(await YClient(
                client.session, ws_url(client, "default", user["access_token"])
            ).connect())
        await asyncio.sleep(0)
    for j in joiners:
        await j.wait_synced()
    await eventually(lambda: all(roots(j.doc) == roots(writer.doc) for j in joiners))
    assert len(writer.workouts()) == 30
    for j in joiners:
        await j.disconnect()
    await writer.disconnect()


# -- awareness ------------------------------------------------------------------------


async def test_awareness_is_relayed_and_removed_when_a_connection_drops(client):
    user = await register(client)
    a, b = await connected(client, user), await connected(client, user)
    await a.send_awareness({"user": {"name": "phone"}, "cursor": 3})
    a_id = a.awareness.client_id
    await eventually(lambda: b.awareness.states.get(a_id) == {"user": {"name": "phone"},
                                                              "cursor": 3})

    # A newcomer learns it on joining.
    c = await connected(client, user)
    await eventually(lambda: a_id in c.awareness.states)

    # a's connection drops without a goodbye: the others forget it.
    sock = a.ws.get_extra_info("socket")
    sock.shutdown(socket.SHUT_RDWR)
    await a.wait_closed()
    await eventually(lambda: a_id not in b.awareness.states and a_id not in c.awareness.states)
    await b.disconnect()
    await c.disconnect()


async def test_awareness_removed_for_others_on_a_clean_disconnect(client):
    user = await register(client)
    a, b = await connected(client, user), await connected(client, user)
    await b.send_awareness({"user": {"name": "tablet"}})
    await a.send_awareness({"user": {"name": "phone"}})
    await eventually(lambda: a.awareness.client_id in b.awareness.states
                     and b.awareness.client_id in a.awareness.states)
    await a.disconnect()
    await eventually(lambda: a.awareness.client_id not in b.awareness.states)
    # b's own state is untouched by a's departure.
    assert b.awareness.states[b.awareness.client_id] == {"user": {"name": "tablet"}}
    await b.disconnect()


async def test_query_awareness_is_answered(client):
    user = await register(client)
    a = await connected(client, user)
    await a.send_awareness({"user": {"name": "phone"}})
    await eventually(lambda: bool(client.app[REGISTRY].rooms[user_key(user)].awareness.states))
    ws = await raw_peer(client, user)
    await ws.send_bytes(b"\x03")  # query awareness
    deadline = time.monotonic() + 10
    found = False
    while not found and time.monotonic() < deadline:
        message = parse_message((await asyncio.wait_for(ws.receive(), 10)).data)
        found = message.type == YMessageType.AWARENESS
    assert found
    await ws.close()
    await a.disconnect()


# -- what is refused --------------------------------------------------------------------


def _upgrade_headers() -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(uuid.uuid4().bytes).decode(),
    }


def _expired_token(user: dict) -> str:
    now = int(time.time())
    claims = {"sub": user["user"]["id"], "email": user["user"]["email"], "role": "user",
              "iat": now - 3600, "exp": now - 60, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


@pytest.mark.parametrize("token", ["missing", "empty", "garbage", "other-secret", "expired"])
async def test_401_in_the_error_envelope_before_the_upgrade(client, token):
    user = await register(client)
    path = "/sync/default"
    if token == "empty":
        path += "?token="
    elif token == "garbage":
        path += "?token=not.a.jwt"
    elif token == "other-secret":
        claims = jwt.decode(user["access_token"], options={"verify_signature": False})
        path += "?token=" + jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256")
    elif token == "expired":
        path += "?token=" + _expired_token(user)

    resp = await client.get(path, headers=_upgrade_headers())
    assert resp.status == 401
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "UNAUTHORIZED"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "X-Request-ID" in resp.headers

    # And a websocket client sees the handshake refused, not an opened socket.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.session.ws_connect(client.make_url(path))
    assert refused.value.status == 401


async def test_a_valid_token_in_the_header_also_works(client):
    user = await register(client)
    ws = await client.session.ws_connect(
        client.make_url("/sync/default"),
        headers={"Authorization": f"Bearer {user['access_token']}"},
    )
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert parse_message(msg.data).sync_type == YSyncMessageType.SYNC_STEP1
    await ws.close()


@pytest.mark.parametrize("name", ["a" * 65, "bad%20name", "semi;colon"])
async def test_names_outside_the_pattern_are_not_found(client, name):
    user = await register(client)
    resp = await client.get(f"/sync/{name}?token={user['access_token']}",
                            headers=_upgrade_headers())
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"


async def _with_one_stored_update(client: Client, db: asyncpg.Connection,
                                  user: dict[str, Any]) -> tuple[YClient, list[bytes]]:
    a = await connected(client, user)
    a.workouts()["w1"] = Map({"name": "squat"})
    await eventually(lambda: _stored_equals(db, user, a.doc))
    return a, await stored_rows(db, user["user"]["id"], "default")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(create_update_message(b"\xff\xff\xff"), id="update-not-yjs"),
        pytest.param(create_update_message(b"garbage bytes here"), id="update-garbage"),
        pytest.param(bytes([0, 1]) + b"\x05ab", id="step2-truncated"),
        pytest.param(b"\x00\x02", id="update-without-payload"),
        pytest.param(b"\x07\x00", id="unknown-message-type"),
        pytest.param(b"\x01\x06\x01\x05\x00\x03{no", id="awareness-not-json"),
        pytest.param(b"\x01\x00", id="awareness-empty"),
        pytest.param(bytes([0, 0]) + b"\x02\x05\x01", id="step1-bad-state-vector"),
    ],
)
async def test_malformed_frame_closes_1003_and_changes_nothing(client, db, frame):
    user = await register(client)
    keeper, before = await _with_one_stored_update(client, db, user)
    bad = await raw_peer(client, user)

    await bad.send_bytes(frame)

    assert await close_code_of(bad) == 1003
    # The others stay connected, got nothing, and nothing was stored.
    assert not keeper.ws.closed and keeper.received_updates == 0
    assert await stored_rows(db, user["user"]["id"], "default") == before
    fresh = await connected(client, user)
    assert roots(fresh.doc) == roots(keeper.doc)
    await fresh.disconnect()
    await keeper.disconnect()


async def test_a_text_frame_closes_1003(client, db):
    user = await register(client)
    keeper, before = await _with_one_stored_update(client, db, user)
    ws = await raw_peer(client, user)
    await ws.send_str('{"type": "update"}')
    assert await close_code_of(ws) == 1003
    assert await stored_rows(db, user["user"]["id"], "default") == before
    await keeper.disconnect()


async def test_a_frame_over_the_size_limit_closes_1009(make_client, db):
    client = await make_client(max_frame_bytes=4096)
    user = await register(client)
    keeper, before = await _with_one_stored_update(client, db, user)
    a = await connected(client, user)

    a.doc.get("notes", type=Text).insert(0, "x" * 8000)  # one update of about 8 KB

    assert await a.wait_closed() == 1009
    assert await stored_rows(db, user["user"]["id"], "default") == before
    assert keeper.received_updates == 0
    fresh = await connected(client, user)
    assert str(fresh.doc.get("notes", type=Text)) == ""
    assert roots(fresh.doc) == roots(keeper.doc)
    await fresh.disconnect()
    await keeper.disconnect()


async def test_a_document_over_its_size_limit_closes_1009_and_stores_nothing(make_client, db):
    client = await make_client(max_document_bytes=2000)
    user = await register(client)
    keeper, before = await _with_one_stored_update(client, db, user)
    a = await connected(client, user)

    a.workouts()["big"] = Map({"notes": "x" * 2500})

    assert await a.wait_closed() == 1009
    assert await stored_rows(db, user["user"]["id"], "default") == before
    assert "big" not in keeper.workouts() and keeper.received_updates == 0
    # Small edits still fit, from anyone else.
    keeper.workouts()["w2"] = Map({"sets": 2})
    await eventually(lambda: _stored_equals(db, user, keeper.doc))
    fresh = await connected(client, user)
    assert set(fresh.workouts()) == {"w1", "w2"}
    await fresh.disconnect()
    await keeper.disconnect()


async def test_too_many_connections_per_user_closes_1008(make_client):
    client = await make_client(max_connections_per_user=2)
    user, other = await register(client), await register(client)
    a1, a2 = await connected(client, user), await connected(client, user, "other-doc")

    third = await client.session.ws_connect(ws_url(client, "default", user["access_token"]))
    assert await close_code_of(third) == 1008
    # Another user is not counted against this one.
    o = await connected(client, other)
    # A slot frees when a connection leaves.
    await a1.disconnect()
    registry = client.app[REGISTRY]
    await eventually(lambda: registry.connections_of(UUID(user["user"]["id"])) == 1)
    again = await connected(client, user)
    assert not again.ws.closed
    for y in (again, a2, o):
        await y.disconnect()
    await eventually(lambda: registry.connections_of(UUID(user["user"]["id"])) == 0)


# -- rooms in memory --------------------------------------------------------------------


async def test_an_idle_room_leaves_memory_and_loads_again(client, db):
    user = await register(client)
    registry = client.app[REGISTRY]
    key = user_key(user)
    a = await connected(client, user)
    a.workouts()["w1"] = Map({"name": "squat", "sets": 5})
    a.doc.get("notes", type=Text).insert(0, "kept")
    await eventually(lambda: _stored_equals(db, user, a.doc))
    room = registry.rooms[key]

    # While someone is connected it stays, however long (idle is 0.2 s here).
    await asyncio.sleep(0.5)
    assert registry.rooms.get(key) is room
    expected = roots(a.doc)
    await a.disconnect()
    await eventually(lambda: key not in registry.rooms)

    fresh = await connected(client, user)
    assert registry.rooms[key] is not room  # loaded again, from storage
    assert roots(fresh.doc) == expected
    assert str(fresh.doc.get("notes", type=Text)) == "kept"
    # And it goes on working: an edit is stored and survives another eviction.
    fresh.workouts()["w2"] = Map({"sets": 1})
    await eventually(lambda: _stored_equals(db, user, fresh.doc))
    await fresh.disconnect()
    await eventually(lambda: key not in registry.rooms)
    last = await connected(client, user)
    assert set(last.workouts()) == {"w1", "w2"}
    await last.disconnect()


async def test_a_stored_row_that_does_not_load_closes_1011_and_http_answers_503(client, db):
    user = await register(client)
    doc_id = await db.fetchval("INSERT INTO documents (user_id, name) VALUES ($1, 'broken')"
                               " RETURNING id", UUID(user["user"]["id"]))
    await db.execute("INSERT INTO doc_updates (user_id, doc_id, seq, data)"
                     " VALUES ($1, $2, 1, 'not an update')", UUID(user["user"]["id"]), doc_id)
    await db.execute("UPDATE documents SET last_seq = 1 WHERE id = $1", doc_id)

    ws = await client.session.ws_connect(ws_url(client, "broken", user["access_token"]))
    assert await close_code_of(ws) == 1011
    resp = await client.get("/api/v1/docs/broken",
                            headers={"Authorization": f"Bearer {user['access_token']}"})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "UNAVAILABLE"
    assert user_key(user, "broken") not in client.app[REGISTRY].rooms  # tried again next time
    assert await stored_rows(db, user["user"]["id"], "broken") == [b"not an update"]


async def test_a_reconnect_within_the_idle_time_finds_the_room_warm(make_client):
    client = await make_client(room_idle_seconds=30.0)
    user = await register(client)
    registry = client.app[REGISTRY]
    a = await connected(client, user)
    room = registry.rooms[user_key(user)]
    await a.disconnect()
    await eventually(lambda: not room.connections)
    b = await connected(client, user)
    assert registry.rooms[user_key(user)] is room
    await b.disconnect()


async def test_two_clients_loading_a_cold_document_share_one_room(client, db):
    user = await register(client)
    a = await connected(client, user)
    a.workouts()["w1"] = Map({"sets": 1})
    await eventually(lambda: _stored_equals(db, user, a.doc))
    await a.disconnect()
    registry = client.app[REGISTRY]
    await eventually(lambda: user_key(user) not in registry.rooms)

    url = ws_url(client, "default", user["access_token"])
    ys = [YClient(client.session, url) for _ in range(5)]
    await asyncio.gather(*(y.connect() for y in ys))
    await asyncio.gather(*(y.wait_synced() for y in ys))
    room = registry.rooms[user_key(user)]
    assert len(room.connections) == 5
    assert all("w1" in y.workouts() for y in ys)
    ys[0].workouts()["w2"] = Map({"sets": 2})
    await eventually(lambda: all("w2" in y.workouts() for y in ys))
    for y in ys:
        await y.disconnect()


async def test_the_pycrdt_doc_types_survive_the_round_trip(client):
    """Nested maps, text and plain values all arrive as they were sent."""
    user = await register(client)
    a, b = await connected(client, user), await connected(client, user)
    a.doc.get("favorites", type=Map)["food-1"] = True
    a.doc.get("food_logs", type=Map)["f1"] = Map(
        {"food_id": "food-1", "quantity_g": 125.5, "meal_type": "lunch", "date": "2026-11-23"}
    )
    await eventually(lambda: "f1" in b.doc.get("food_logs", type=Map)
                     and "food-1" in b.doc.get("favorites", type=Map))
    assert roots(b.doc) == roots(a.doc)
    assert b.doc.get("favorites", type=Map)["food-1"] is True
    await a.disconnect()
    await b.disconnect()
