"""The documents service (modi_sync/documents.py): the one server-side way into a
user's documents, on the real app, its writer, PostgreSQL and the Redis bus."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest
from pycrdt import Doc, Map

from modi_sync.app_keys import DOCUMENTS, UPDATE_LOG
from modi_sync.errors import Invalid, NotFound

from .conftest import register, synced
from .test_sync_websocket import doc_updates_locked, insert_is_waiting, stored_rows
from .yclient import eventually, stays_false


def _workout(key: str, sets: int) -> bytes:
    doc = Doc()
    doc.get("workouts", type=Map)[key] = Map({"name": "squat", "sets": sets})
    return doc.get_update()


async def test_an_update_through_the_service_is_stored_first_then_reaches_another_instance(
    make_client, db
):
    first, second = await make_client(), await make_client()
    pair = await register(first)
    user_id = UUID(pair["user"]["id"])
    listener = await synced(second, pair["access_token"], "plan")  # on the other instance

    async with doc_updates_locked(db):  # the writer's INSERT waits here
        applying = asyncio.create_task(
            first.server.app[DOCUMENTS].apply(user_id, "plan", _workout("w1", 5)))
        await eventually(lambda: insert_is_waiting(db))
        assert await stays_false(lambda: "w1" in listener.workouts(), seconds=0.3)
        assert not applying.done()  # nor is the caller answered before it is stored
    state_vector = await applying

    await eventually(lambda: "w1" in listener.workouts())
    assert listener.workouts().to_py() == {"w1": {"name": "squat", "sets": 5.0}}
    assert listener.doc.get_state() == state_vector
    assert len(await stored_rows(db, pair["user"]["id"], "plan")) == 1
    await listener.disconnect()


async def test_a_large_document_is_read_as_json_a_slice_at_a_time(client):
    """GET /api/v1/docs/{name} of a large document lets the event loop serve others
    between slices of entries, rather than holding it for the whole document."""
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    documents = client.server.app[DOCUMENTS]
    doc = Doc()
    workouts = doc.get("workouts", type=Map)
    with doc.transaction():
        for i in range(1200):  # five slices
            workouts[f"w{i}"] = Map({"name": "squat", "sets": i})
    await documents.apply(user_id, "big", doc.get_update())

    turns = 0
    reading = True

    async def ticker() -> None:
        nonlocal turns
        while reading:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    turns = 0
    content = await documents.json(user_id, "big")
    reading = False
    await ticking
    assert content["workouts"] == workouts.to_py()
    assert turns >= 4  # a turn of the loop between each two of the five slices


async def test_json_state_and_deletion(client, db):
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    documents = client.server.app[DOCUMENTS]
    await documents.apply(user_id, "log", _workout("w1", 3))

    assert (await documents.json(user_id, "log"))["workouts"] == {
        "w1": {"name": "squat", "sets": 3.0}}
    whole = Doc()
    whole.apply_update(await documents.update_since(user_id, "log"))
    assert whole.get("workouts", type=Map).to_py() == {"w1": {"name": "squat", "sets": 3.0}}

    await documents.delete(user_id, "log")
    assert await stored_rows(db, pair["user"]["id"], "log") == []
    with pytest.raises(NotFound):
        await documents.json(user_id, "log")
    with pytest.raises(NotFound):
        await documents.delete(user_id, "log")


async def test_a_bad_update_is_invalid_and_changes_nothing(client, db):
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    with pytest.raises(Invalid) as refused:
        await client.server.app[DOCUMENTS].apply(user_id, "x", b"\x05garbage")
    assert refused.value.field == "update"
    assert await stored_rows(db, pair["user"]["id"], "x") == []


async def test_every_document_is_listed_however_many(client):
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    names = [f"d{i:04d}" for i in range(1234)]  # more than one read of the stream
    await client.server.app[UPDATE_LOG].create_documents([(user_id, n) for n in names])
    listed = [info.name async for info in client.server.app[DOCUMENTS].each(user_id)]
    assert listed == names
