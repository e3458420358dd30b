"""Documents over HTTP (docs/api.md, "HTTP routes"): list, JSON, updates in and out,
deletion."""

from __future__ import annotations

import asyncio
import base64
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
from pycrdt import Doc, Map, Text, write_var_uint

from .conftest import Client, register, ws_url
from .hostile import LagMonitor
from .yclient import YClient, eventually


def _auth(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def _workout_update(doc: Doc, key: str, name: str) -> bytes:
    captured: list[bytes] = []
    sub = doc.observe(lambda e: captured.append(e.update))
    doc.get("workouts", type=Map)[key] = Map({"name": name, "sets": 3, "reps": 8})
    doc.unobserve(sub)
    return captured[0]


def _text_update(size: int) -> bytes:
    """A real update of about ``size`` bytes: one Text insert."""
    doc = Doc()
    captured: list[bytes] = []
    sub = doc.observe(lambda e: captured.append(e.update))
    doc.get("notes", type=Text).insert(0, "x" * size)
    doc.unobserve(sub)
    return captured[0]


async def _slowly(data: bytes, piece: int = 16 * 1024) -> AsyncIterator[bytes]:
    """A slow client: the body goes out chunked, a piece at a time."""
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
        await asyncio.sleep(0.01)  # the point: the server must wait for the rest


async def _stored_rows(db: asyncpg.Connection, pair: dict[str, Any], name: str) -> list[bytes]:
    rows = await db.fetch(
        "SELECT u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = $2 ORDER BY u.seq",
        uuid.UUID(pair["user"]["id"]), name)
    return [row["data"] for row in rows]


def _notes(rows: list[bytes]) -> str:
    doc = Doc()
    for row in rows:
        doc.apply_update(row)
    return str(doc.get("notes", type=Text))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _post(client: Client, pair: dict[str, Any], name: str, body: bytes,
                ctype: str = "application/octet-stream") -> aiohttp.ClientResponse:
    return await client.post(f"/api/v1/docs/{name}/update", data=body,
                             headers={**_auth(pair), "Content-Type": ctype})


async def test_posted_update_is_stored_and_fanned_out_like_a_websocket_one(client, db):
    pair = await register(client)
    listener = await YClient(client.session, ws_url(client, "log", pair["access_token"])).connect()
    await listener.wait_synced()

    update = _workout_update(Doc(), "w1", "deadlift")
    resp = await _post(client, pair, "log", update)
    assert resp.status == 200
    state_vector = base64.urlsafe_b64decode((await resp.json())["data"]["state_vector"] + "==")
    assert state_vector != b"\x00"

    await eventually(lambda: "w1" in listener.workouts())
    assert listener.workouts()["w1"]["name"] == "deadlift"
    rows = await db.fetchval(
        "SELECT count(*) FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = 'log'", uuid.UUID(pair["user"]["id"]))
    assert rows == 1
    await listener.disconnect()


async def test_a_large_update_is_read_to_its_end(client, db):
    pair = await register(client)
    update = _text_update(2_000_000)
    assert len(update) > 2_000_000
    resp = await _post(client, pair, "big", io.BytesIO(update))  # with a Content-Length
    assert resp.status == 200, await resp.text()
    assert _notes(await _stored_rows(db, pair, "big")) == "x" * 2_000_000


async def test_a_slow_chunked_update_is_read_to_its_end(client, db):
    pair = await register(client)
    resp = await _post(client, pair, "slow", _slowly(_text_update(200_000)))
    assert resp.status == 200, await resp.text()
    assert _notes(await _stored_rows(db, pair, "slow")) == "x" * 200_000


async def test_a_chunked_update_over_the_cap_is_refused_whole(make_client, db):
    client = await make_client(max_frame_bytes=64 * 1024)
    pair = await register(client)
    resp = await _post(client, pair, "capped", _slowly(_text_update(200_000)))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert await _stored_rows(db, pair, "capped") == []
    assert (await client.get("/api/v1/docs/capped", headers=_auth(pair))).status == 404


async def test_json_view_lists_the_schema_roots_only(client):
    pair = await register(client)
    doc = Doc()
    await _post(client, pair, "plan", _workout_update(doc, "w1", "squat"))
    captured: list[bytes] = []
    sub = doc.observe(lambda e: captured.append(e.update))
    doc.get("scratch", type=Map)["x"] = 1  # a root the server does not read
    doc.unobserve(sub)
    await _post(client, pair, "plan", captured[0])

    resp = await client.get("/api/v1/docs/plan", headers=_auth(pair))
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert set(data) == {"workouts", "weights", "food_logs", "favorites", "ocr_drafts"}
    assert data["workouts"]["w1"]["name"] == "squat"


async def test_update_route_returns_what_the_caller_lacks(client):
    pair = await register(client)
    doc = Doc()
    await _post(client, pair, "d", _workout_update(doc, "a", "one"))
    known = doc.get_state()
    await _post(client, pair, "d", _workout_update(doc, "b", "two"))

    everything = await client.get("/api/v1/docs/d/update", headers=_auth(pair))
    assert everything.content_type == "application/octet-stream"
    fresh = Doc()
    fresh.apply_update(await everything.read())
    assert set(fresh.get("workouts", type=Map).keys()) == {"a", "b"}

    missing = await client.get(f"/api/v1/docs/d/update?state_vector={_b64(known)}",
                               headers=_auth(pair))
    partial = Doc()
    partial.apply_update(await missing.read())
    assert len(await missing.read()) < len(await everything.read())
    assert "b" in partial.get("workouts", type=Map)


async def test_list_shows_name_size_updates_and_time(client):
    pair = await register(client)
    await _post(client, pair, "one", _workout_update(Doc(), "a", "x"))
    await _post(client, pair, "two", _workout_update(Doc(), "a", "y"))
    resp = await client.get("/api/v1/docs?limit=1&page=2", headers=_auth(pair))
    body = await resp.json()
    assert body["pagination"] == {"page": 2, "limit": 1, "total": 2, "total_pages": 2}
    (entry,) = body["data"]
    assert entry["name"] == "two" and entry["updates"] == 1 and entry["size_bytes"] > 0
    assert entry["updated_at"]


async def test_bad_requests_store_nothing(make_client, db):
    client = await make_client(max_frame_bytes=1024)
    pair = await register(client)
    assert (await _post(client, pair, "d", b"\x01\x02garbage")).status == 400
    assert (await _post(client, pair, "d", b"{}", "application/json")).status == 415
    too_big = await _post(client, pair, "d", b"\x00" * 2048)
    assert too_big.status == 413
    assert (await too_big.json())["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert (await _post(client, pair, "ok", _workout_update(Doc(), "a", "x"))).status == 200
    for state_vector in ("!!!", _b64(b"\xff\xff\xff")):
        bad = await client.get(f"/api/v1/docs/ok/update?state_vector={state_vector}",
                               headers=_auth(pair))
        assert bad.status == 400, state_vector
        assert (await bad.json())["error"]["details"]["field"] == "state_vector"
    stored = await db.fetchval(
        "SELECT count(*) FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = 'd'", uuid.UUID(pair["user"]["id"]))
    assert stored == 0


async def test_a_few_bytes_claiming_millions_of_entries_are_refused_at_once(client, db):
    """Four bytes that claim 2^27 clients: yrs would reserve room for them all (about
    250 MB, 150 ms of the event loop) before finding there are none."""
    pair = await register(client)
    assert (await _post(client, pair, "d", _workout_update(Doc(), "a", "x"))).status == 200
    claim = write_var_uint(2**27)
    async with LagMonitor() as lag:
        update = await _post(client, pair, "d", claim)
        missing = await client.get(f"/api/v1/docs/d/update?state_vector={_b64(claim)}",
                                   headers=_auth(pair))
    assert (update.status, missing.status) == (400, 400)
    assert (await update.json())["error"]["details"]["field"] == "body"
    assert (await missing.json())["error"]["details"]["field"] == "state_vector"
    assert lag.worst < 0.05, lag.report()
    assert len(await _stored_rows(db, pair, "d")) == 1


async def test_another_users_document_is_out_of_reach(client):
    owner, other = await register(client), await register(client)
    await _post(client, owner, "private", _workout_update(Doc(), "a", "secret plan"))
    resp = await client.get("/api/v1/docs/private", headers=_auth(other))
    assert resp.status == 404
    raw = await client.get("/api/v1/docs/private/update", headers=_auth(other))
    assert raw.status == 404
    assert (await client.delete("/api/v1/docs/private", headers=_auth(other))).status == 404
    assert (await client.get("/api/v1/docs/private", headers=_auth(owner))).status == 200


async def test_delete_erases_history_and_closes_sockets(client, db):
    pair = await register(client)
    await _post(client, pair, "gone", _workout_update(Doc(), "a", "x"))
    conn = await YClient(client.session, ws_url(client, "gone", pair["access_token"])).connect()
    await conn.wait_synced()
    resp = await client.delete("/api/v1/docs/gone", headers=_auth(pair))
    assert resp.status == 204
    assert await conn.wait_closed(timeout=2) == 4404
    assert await db.fetchval(
        "SELECT count(*) FROM documents WHERE user_id = $1 AND name = 'gone'",
        uuid.UUID(pair["user"]["id"])) == 0
    assert (await client.get("/api/v1/docs/gone", headers=_auth(pair))).status == 404


async def test_a_document_exists_once_something_is_stored_in_it(client, db):
    pair = await register(client)
    reader = await YClient(client.session, ws_url(client, "later", pair["access_token"])).connect()
    await reader.wait_synced()  # opened and synced, but nothing written

    assert await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1",
                             uuid.UUID(pair["user"]["id"])) == 0
    assert (await (await client.get("/api/v1/docs", headers=_auth(pair))).json())["data"] == []
    assert (await client.get("/api/v1/docs/later", headers=_auth(pair))).status == 404
    assert (await client.delete("/api/v1/docs/later", headers=_auth(pair))).status == 404

    reader.workouts()["w1"] = Map({"name": "row"})
    await eventually(lambda: _status(client, pair, "/api/v1/docs/later", 200))
    listed = (await (await client.get("/api/v1/docs", headers=_auth(pair))).json())["data"]
    assert [(d["name"], d["updates"]) for d in listed] == [("later", 1)]
    await reader.disconnect()


async def _status(client: Client, pair: dict[str, Any], path: str, status: int) -> bool:
    return (await client.get(path, headers=_auth(pair))).status == status


async def test_routes_need_a_token(client):
    for method, path in (("GET", "/api/v1/docs"), ("GET", "/api/v1/docs/a"),
                         ("GET", "/api/v1/docs/a/update"), ("POST", "/api/v1/docs/a/update"),
                         ("DELETE", "/api/v1/docs/a")):
        resp = await client.request(method, path)
        assert resp.status == 401, (method, path)
