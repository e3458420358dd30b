"""Compaction, automatic compaction, history and restore, against the real update update_log."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pycrdt import Doc, Map, Text

from modi_sync.app_keys import REGISTRY
from modi_sync.history import compact_document
from storage.update_log import UpdateLog

from .conftest import Client, register, run_cli, ws_url
from .yclient import YClient, eventually


async def _rows(db: asyncpg.Connection, user_id: uuid.UUID, name: str) -> list[bytes]:
    return [r[0] for r in await db.fetch(
        "SELECT u.data FROM doc_updates u"
        " JOIN documents d ON d.user_id = u.user_id AND d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = $2 ORDER BY u.seq", user_id, name)]


def _doc_of(updates: list[bytes]) -> Doc:
    doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


async def _client_with_edits(
    client: Client, name: str, count: int
) -> tuple[dict[str, Any], uuid.UUID, YClient, YClient]:
    """A client that made ``count`` edits, each its own row (see ``_add_edits``), and a
    second client of the same document that watches them arrive."""
    pair = await register(client)
    user_id = uuid.UUID(pair["user"]["id"])
    conn, watch = (YClient(client.session, ws_url(client, name, pair["access_token"]))
                   for _ in range(2))
    for c in (conn, watch):
        await c.connect()
        await c.wait_synced()
    await _add_edits(conn, watch, range(count))
    return pair, user_id, conn, watch


async def _add_edits(conn: YClient, watch: YClient, keys: range) -> None:
    """Edit one key after another, each once the last is stored (the server sends an
    update on only once it is stored): the writer merges a document's updates that
    arrive together into one row, and these tests need a row per edit."""
    for i in keys:
        conn.workouts()[f"w{i}"] = Map({"name": f"lift {i}", "sets": 3})
        await eventually(lambda i=i: f"w{i}" in watch.workouts())


async def test_deleted_content_leaves_no_byte_in_the_log(client, db, services):
    pair, user_id, conn, _ = await _client_with_edits(client, "diary", 3)
    notes = conn.doc.get("food_logs", type=Map)
    notes["secret"] = Map({"food_id": "EMBARRASSING-SNACK-42", "quantity_g": 300})
    text = conn.doc.get("journal", type=Text)
    text += "keep this. PRIVATE-THOUGHT-99 gone."
    await eventually(lambda: _has(db, user_id, "diary", b"PRIVATE-THOUGHT-99"))
    del notes["secret"]
    del text[11:31]

    async def deletions_stored() -> bool:
        stored = _doc_of(await _rows(db, user_id, "diary"))
        return (str(stored.get("journal", type=Text)) == str(text)
                and "secret" not in stored.get("food_logs", type=Map))

    await eventually(deletions_stored)
    assert await _has(db, user_id, "diary", b"EMBARRASSING-SNACK-42")
    updates = len(await _rows(db, user_id, "diary"))

    code, out, err = await run_cli(services, "compact", "--doc", f"{user_id}/diary")
    assert code == 0, err
    assert f"compacted 1 documents: {updates} -> 1 updates" in out

    raw = b"".join(await _rows(db, user_id, "diary"))
    assert b"EMBARRASSING-SNACK-42" not in raw and b"PRIVATE-THOUGHT-99" not in raw
    restored = _doc_of(await _rows(db, user_id, "diary"))
    assert restored.get("workouts", type=Map).to_py() == conn.workouts().to_py()
    assert str(restored.get("journal", type=Text)) == str(text)
    await conn.disconnect()


async def _has(db: asyncpg.Connection, user_id: uuid.UUID, name: str, needle: bytes) -> bool:
    return any(needle in row for row in await _rows(db, user_id, name))


async def _count(db: asyncpg.Connection, user_id: uuid.UUID, name: str, n: int) -> bool:
    return len(await _rows(db, user_id, name)) == n


async def _workouts(db: asyncpg.Connection, user_id: uuid.UUID, name: str) -> dict[str, Any]:
    return _doc_of(await _rows(db, user_id, name)).get("workouts", type=Map).to_py()


async def test_compaction_under_a_concurrent_writer_loses_nothing(client, db, services):
    pair, user_id, conn, _ = await _client_with_edits(client, "busy", 50)
    pool = await asyncpg.create_pool(services.database_url, min_size=1, max_size=2)
    update_log = UpdateLog(pool)
    doc_id = await db.fetchval("SELECT id FROM documents WHERE user_id = $1", user_id)

    async def writer() -> None:
        for i in range(50, 150):
            conn.workouts()[f"w{i}"] = Map({"name": f"lift {i}", "sets": 3})
            await asyncio.sleep(0)  # let the compaction interleave with the edits

    async def compactor() -> None:
        for _ in range(5):
            await compact_document(update_log, doc_id, snapshot_every=None)

    try:
        await asyncio.gather(writer(), compactor())
        expected = {f"w{i}" for i in range(150)}

        async def all_stored() -> bool:
            return await _stored_keys(db, user_id) == expected

        await eventually(all_stored)
        await compact_document(update_log, doc_id, snapshot_every=None)
    finally:
        await pool.close()
    assert len(await _rows(db, user_id, "busy")) == 1
    assert await _stored_keys(db, user_id) == {f"w{i}" for i in range(150)}
    await conn.disconnect()


async def _stored_keys(db: asyncpg.Connection, user_id: uuid.UUID) -> set[str]:
    doc = _doc_of(await _rows(db, user_id, "busy"))
    return set(doc.get("workouts", type=Map).keys())


async def test_automatic_compaction_keeps_the_room_serving(make_client, db):
    client = await make_client(auto_compact_updates=20, auto_compact_interval=0)
    pair, user_id, conn, _ = await _client_with_edits(client, "auto", 60)
    await eventually(lambda: _rows_below(db, user_id, "auto", 20))
    other = await YClient(client.session, ws_url(client, "auto", pair["access_token"])).connect()
    await other.wait_synced()
    assert set(other.workouts().keys()) == {f"w{i}" for i in range(60)}
    room = client.server.app[REGISTRY].rooms[(user_id, "auto")]
    assert room.stored_updates < 20
    await conn.disconnect()
    await other.disconnect()


async def test_automatic_compaction_waits_its_interval_or_the_room_leaving(make_client, db):
    client = await make_client(auto_compact_updates=20, auto_compact_interval=3600,
                               room_idle_seconds=0.2)
    pair, user_id, conn, watch = await _client_with_edits(client, "hot", 25)
    room = client.server.app[REGISTRY].rooms[(user_id, "hot")]
    await eventually(lambda: room.compacted_at > float("-inf"))  # the first one ran
    await _add_edits(conn, watch, range(25, 50))
    await eventually(lambda: _rows_are(db, user_id, "hot", None, 50))
    # Over the line again (25 new rows > 20), but within the interval: not merged again.
    assert len(await _rows(db, user_id, "hot")) >= 25
    # Until the room leaves memory: the next load then reads one merged row.
    await conn.disconnect()
    await watch.disconnect()
    await eventually(lambda: (user_id, "hot") not in client.server.app[REGISTRY].rooms)
    await eventually(lambda: _rows_are(db, user_id, "hot", 1, 50))


async def test_shutdown_runs_the_compactions_that_were_waiting(make_client, db):
    client = await make_client(auto_compact_updates=20, auto_compact_interval=3600)
    _, user_id, conn, watch = await _client_with_edits(client, "busy", 25)
    registry = client.server.app[REGISTRY]
    room = registry.rooms[(user_id, "busy")]
    await eventually(lambda: room.compacted_at > float("-inf"))
    await _add_edits(conn, watch, range(25, 50))
    await eventually(lambda: _rows_are(db, user_id, "busy", None, 50))
    assert len(await _rows(db, user_id, "busy")) >= 25

    await registry.close()  # what on_shutdown does
    assert await _rows_are(db, user_id, "busy", 1, 50)
    assert await conn.wait_closed(timeout=2) == 1001


async def test_a_room_written_to_leaves_memory_as_one_row_and_one_only_read_as_it_was(
        make_client, db, pool):
    client = await make_client(auto_compact_updates=500, auto_compact_interval=3600,
                               room_idle_seconds=0.2)
    registry = client.server.app[REGISTRY]
    pair, user_id, conn, watch = await _client_with_edits(client, "written", 5)
    assert await _rows_are(db, user_id, "written", 5, 5)  # far under the line of 500
    await conn.disconnect()
    await watch.disconnect()
    await eventually(lambda: (user_id, "written") not in registry.rooms)
    await eventually(lambda: _rows_are(db, user_id, "written", 1, 5))

    # A document this instance only read keeps its rows: nothing new to merge.
    update_log = UpdateLog(pool)
    stored = await update_log.load(user_id, "read")
    assert stored is not None
    updates = [_doc_with(f"w{i}") for i in range(3)]
    await update_log.append_many([stored.doc_id] * 3, updates)
    reader = YClient(client.session, ws_url(client, "read", pair["access_token"]))
    await reader.connect()
    await reader.wait_synced()
    assert set(reader.workouts().keys()) == {"w0", "w1", "w2"}
    await reader.disconnect()
    # Compaction would start as the room leaves, and stay a task until it is done.
    await eventually(lambda: (user_id, "read") not in registry.rooms and not registry._tasks)
    assert await _rows(db, user_id, "read") == updates


def _doc_with(key: str) -> bytes:
    doc = Doc()
    doc.get("workouts", type=Map)[key] = Map({"sets": 1})
    return doc.get_update()


async def _rows_are(db: asyncpg.Connection, user_id: uuid.UUID, name: str, count: int | None,
                    keys: int) -> bool:
    rows = await _rows(db, user_id, name)
    held = set(_doc_of(rows).get("workouts", type=Map).keys())
    return (count is None or len(rows) == count) and held == {f"w{i}" for i in range(keys)}


async def _rows_below(db: asyncpg.Connection, user_id: uuid.UUID, name: str, n: int) -> bool:
    rows = await _rows(db, user_id, name)
    keys = set(_doc_of(rows).get("workouts", type=Map).keys())
    return len(rows) < n and keys == {f"w{i}" for i in range(60)}


async def test_compact_all_dry_run_min_updates_and_exit_codes(client, db, services):
    _, user_id, conn, _ = await _client_with_edits(client, "many", 5)
    assert await _count(db, user_id, "many", 5)
    code, out, _ = await run_cli(services, "compact", "--all", "--min-updates", "5", "--dry-run")
    assert code == 0 and out.startswith("would compact")
    assert await _count(db, user_id, "many", 5)  # a dry run changes nothing
    code, out, _ = await run_cli(services, "compact", "--doc", f"{user_id}/many",
                              "--min-updates", "6")
    assert code == 0 and "compacted 0 documents" in out
    code, _, err = await run_cli(services, "compact", "--doc", f"{uuid.uuid4()}/nothing")
    assert code == 3 and "no document" in err
    code, _, _ = await run_cli(services, "compact", "--doc", "not-a-ref")
    assert code == 2
    code, _, _ = await run_cli(services, "compact")  # --doc or --all is required
    assert code == 2
    await conn.disconnect()


async def test_history_and_restore_bring_back_a_past_state(client, db, services):
    pair, user_id, conn, _ = await _client_with_edits(client, "plan", 3)
    code, _, err = await run_cli(services, "compact", "--doc", f"{user_id}/plan")
    assert code == 0, err
    before = datetime.now(UTC)
    await eventually(lambda: datetime.now(UTC) > before + timedelta(milliseconds=20))
    good = conn.workouts().to_py()

    # A bad sync: everything deleted, something odd added.
    for key in list(conn.workouts().keys()):
        del conn.workouts()[key]
    conn.workouts()["junk"] = Map({"name": "???"})

    async def bad_sync_stored() -> bool:
        return await _workouts(db, user_id, "plan") == {"junk": {"name": "???"}}

    await eventually(bad_sync_stored)
    offline = await YClient(client.session, ws_url(client, "plan", pair["access_token"])).connect()
    await offline.wait_synced()
    await offline.disconnect()

    code, out, _ = await run_cli(services, "history", f"{user_id}/plan")
    assert code == 0 and "up to update" in out
    code, out, err = await run_cli(services, "restore", f"{user_id}/plan", "--at",
                                   before.isoformat())
    assert code == 0, err
    assert "restored" in out

    await eventually(lambda: conn.workouts().to_py() == good)  # the connected client
    await offline.connect()  # the one that was offline during the restore
    await offline.wait_synced()
    await eventually(lambda: offline.workouts().to_py() == good)
    assert _doc_of(await _rows(db, user_id, "plan")).get("workouts", type=Map).to_py() == good
    await conn.disconnect()
    await offline.disconnect()
