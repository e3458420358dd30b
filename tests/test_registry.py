"""RoomRegistry: one load per document however many wait, on the real UpdateLog."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from pycrdt import Doc, Map

from modi_sync.sync.memory import MemoryReturn
from modi_sync.sync.registry import DocumentNotFound, RoomRegistry
from modi_sync.sync.room import Room, RoomLimits
from modi_sync.sync.writer import GroupCommitWriter
from storage.doc_events import UPDATE, DocEvent, DocKey
from storage.update_log import StoredDocument, UpdateLog
from storage.users import UserStore

from .test_room import RecordingConnection
from .yclient import eventually, stays_false


class CountingLog(UpdateLog):
    """The real update update_log; counts the documents each load query asked for."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.queries: list[int] = []
        self.loaded: list[DocKey] = []  # every document each load query asked for
        self.listed: list[int] = []  # users whose names each query read
        self.fail_next = False

    async def load_many(self, wanted: Sequence[DocKey]) -> list[StoredDocument | None]:
        self.queries.append(len(wanted))
        self.loaded.extend(wanted)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        return await super().load_many(wanted)

    async def names_many(
        self, user_ids: Sequence[UUID], most: int
    ) -> dict[UUID, list[str] | None]:
        self.listed.append(len(user_ids))
        return await super().names_many(user_ids, most)


@pytest.fixture
async def update_log(pool: asyncpg.Pool) -> CountingLog:
    return CountingLog(pool)


@pytest.fixture
async def registry(update_log: CountingLog) -> AsyncIterator[RoomRegistry]:
    writer = GroupCommitWriter(update_log)
    await writer.start()
    registry = RoomRegistry(update_log, writer, idle_seconds=30,
                            limits=RoomLimits(max_bytes=1 << 20),
                            max_connections_per_user=8)
    try:
        yield registry
    finally:
        await registry.close()
        await writer.stop()


@pytest.fixture
async def user_id(pool: asyncpg.Pool) -> UUID:
    user = await UserStore(pool).create(f"reg-{uuid.uuid4().hex[:10]}@example.com", "x")
    return user.id


async def test_concurrent_callers_share_one_load_and_one_room(registry, update_log, user_id):
    key = (user_id, "shared")
    rooms = await asyncio.gather(*(registry.get(key) for _ in range(5)))
    assert all(room is rooms[0] for room in rooms)
    assert update_log.queries == [1]
    assert await registry.get(key) is rooms[0]  # in memory now: no query
    assert update_log.queries == [1]


async def test_a_reader_of_a_missing_document_is_told_so_while_a_writer_gets_the_room(
    registry, update_log, user_id,
):
    key = (user_id, "never-written")
    reader, writer = await asyncio.gather(
        registry.get(key, create=False), registry.get(key), return_exceptions=True)
    assert isinstance(reader, DocumentNotFound)
    assert writer is registry.rooms[key]
    assert update_log.queries == [1]
    alone = (user_id, "read-only")
    with pytest.raises(DocumentNotFound):
        await registry.get(alone, create=False)
    assert alone not in registry.rooms  # reading makes no room


async def test_a_caller_that_gives_up_leaves_the_load_to_the_others(registry, update_log, user_id):
    key = (user_id, "impatient")
    impatient = asyncio.ensure_future(registry.get(key))
    patient = asyncio.ensure_future(registry.get(key))
    await asyncio.sleep(0)  # both are waiting for the one load
    impatient.cancel()
    room = await patient
    assert impatient.cancelled()
    assert registry.rooms[key] is room
    assert update_log.queries == [1]


async def test_a_failed_load_fails_every_caller_and_pins_nothing(registry, update_log, user_id):
    key = (user_id, "flaky")
    update_log.fail_next = True
    results = await asyncio.gather(registry.get(key), registry.get(key), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert key not in registry.rooms
    room = await registry.get(key)  # the next caller loads again
    assert registry.rooms[key] is room
    assert update_log.queries == [1, 1]


# -- the names of a user's documents --------------------------------------------------


def _update(key: str) -> bytes:
    doc = Doc()
    doc.get("workouts", type=Map)[key] = "squat"
    return doc.get_update()


async def _store(pool: asyncpg.Pool, user_id: UUID, name: str) -> None:
    """As another instance would: a row and an update, with nothing said on the bus."""
    update_log = UpdateLog(pool)
    stored = await update_log.load(user_id, name)
    await update_log.append_many([stored.doc_id], [_update(name)])


def _settled(coro: Coroutine[Any, Any, Room]) -> Room:
    """The coroutine's result if it completes without waiting for anything (no query)."""
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    return done.value.value


def _workouts(room: Room) -> set[str]:
    return set(room.doc.get("workouts", type=Map).keys())


async def test_a_name_not_among_the_user_documents_opens_without_a_query(
        registry, update_log, user_id, pool):
    await _store(pool, user_id, "kept")
    assert _workouts(await registry.get((user_id, "kept"))) == {"kept"}
    # The user's names came with the load.
    assert (update_log.queries, update_log.listed) == ([1], [1])

    fresh = _settled(registry.get((user_id, "fresh")))
    assert registry.rooms[(user_id, "fresh")] is fresh and not fresh.exists
    with pytest.raises(DocumentNotFound):  # a reader is told at once as well
        _settled(registry.get((user_id, "typo"), create=False))
    assert (update_log.queries, update_log.listed) == ([1], [1])


async def test_a_document_heard_of_is_loaded_even_while_the_names_are_being_read(
        registry, update_log, user_id, pool):
    first = asyncio.ensure_future(registry.get((user_id, "first")))
    await asyncio.sleep(0)  # its load, and the reading of the user's names, are under way
    registry.handle_doc_events([DocEvent(UPDATE, (user_id, "early"), _update("early"))])
    await first
    await _store(pool, user_id, "early")  # (the bus says so only once it is stored)
    await _store(pool, user_id, "late")
    registry.handle_doc_events([DocEvent(UPDATE, (user_id, "late"), _update("late"))])

    assert _workouts(await registry.get((user_id, "early"))) == {"early"}
    assert _workouts(await registry.get((user_id, "late"))) == {"late"}
    assert update_log.queries == [1, 1, 1]


async def test_after_a_catch_up_the_names_are_read_again(registry, update_log, user_id, pool):
    await registry.get((user_id, "first"))
    await _store(pool, user_id, "unheard")  # a bus message about it was lost
    registry.catch_up()
    assert _workouts(await registry.get((user_id, "unheard"))) == {"unheard"}
    assert update_log.listed == [1, 1]


async def test_a_catch_up_reloads_only_the_rooms_behind_their_documents(
        registry, update_log, user_id, pool, caplog):
    """Each room knows the last seq of its document it applied: from its load, its own
    commits, and the bus. A catch-up reads the counters of every room's document in one
    query and reads again only the rooms behind theirs."""
    names = ["quiet", "mine", "heard", "missed", "holed"]
    for name in names:
        await _store(pool, user_id, name)
    rooms = {name: await registry.get((user_id, name)) for name in names}
    assert {r.applied_seq for r in rooms.values()} == {1}  # as loaded

    # Written through this instance: its own commit.
    rooms["mine"].apply_update(_update("mine 2"), None)
    await eventually(lambda: rooms["mine"].applied_seq == 2)
    # Another instance stores updates; the bus brings some of them, with their seqs.
    other = UpdateLog(pool)

    async def elsewhere(name: str, label: str, heard: bool) -> None:
        update = _update(label)
        (seq,) = await other.append_many([rooms[name].doc_id], [update], [user_id])
        if heard:
            registry.handle_doc_events([DocEvent(UPDATE, (user_id, name), update, seq)])

    await elsewhere("heard", "heard 2", heard=True)
    await elsewhere("missed", "missed 2", heard=False)
    await elsewhere("holed", "holed 2", heard=False)  # seq 2 lost, seq 3 heard: behind
    await elsewhere("holed", "holed 3", heard=True)
    assert rooms["heard"].applied_seq == 2 and rooms["holed"].applied_seq == 1
    assert "holed 3" in _workouts(rooms["holed"]) and "holed 2" not in _workouts(rooms["holed"])

    update_log.loaded.clear()
    caplog.set_level("INFO", logger="modi_sync.sync.registry")
    registry.catch_up()
    await eventually(lambda: "caught up after a gap" in caplog.text)
    assert sorted(name for _, name in update_log.loaded) == ["holed", "missed"]
    assert "2 of 5 rooms in memory are behind" in caplog.text
    assert _workouts(rooms["missed"]) == {"missed", "missed 2"}
    assert _workouts(rooms["holed"]) == {"holed", "holed 2", "holed 3"}
    assert rooms["missed"].applied_seq == 2 and rooms["holed"].applied_seq == 3
    assert all(registry.rooms[(user_id, name)] is rooms[name] for name in names)

    # Up to date now: the next catch-up reads no room again.
    update_log.loaded.clear()
    caplog.clear()
    registry.catch_up()
    await eventually(lambda: "caught up after a gap" in caplog.text)
    assert update_log.loaded == [] and "0 of 5 rooms" in caplog.text


async def test_a_room_written_here_is_loaded_after_it_leaves_memory(update_log, user_id):
    writer = GroupCommitWriter(update_log)
    await writer.start()
    registry = RoomRegistry(update_log, writer, idle_seconds=0.05,
                            limits=RoomLimits(max_bytes=1 << 20),
                            max_connections_per_user=8)
    try:
        present = RecordingConnection(user_id)  # keeps the user's names in memory meanwhile
        anchor = await registry.join((user_id, "anchor"), present)
        written = _settled(registry.get((user_id, "new")))
        await writer.wait_committed(written.apply_update(_update("new"), None))
        await eventually(lambda: (user_id, "new") not in registry.rooms)

        assert _workouts(await registry.get((user_id, "new"))) == {"new"}
        assert update_log.listed == [1]  # the same list: the name was added as the room left
        registry.leave(anchor, present)
        await eventually(lambda: not registry.rooms)  # the user's last room left
        await registry.get((user_id, "again"))
        assert update_log.listed == [1, 1]  # so their names were forgotten, and read again
    finally:
        await registry.close()
        await writer.stop()


async def test_rooms_leaving_in_a_wave_give_their_memory_back_in_one_trim():
    """glibc keeps what freed rooms held until malloc_trim: one trim a while after a
    wave of rooms left, and never more often than every ``every`` seconds."""
    calls: list[float] = []

    def trim(pad: int) -> int:
        calls.append(time.monotonic())
        return 1

    memory = MemoryReturn(delay=0.05, every=0.3, trim=trim)
    for _ in range(100):
        memory.freed()
    await eventually(lambda: len(calls) == 1)
    memory.freed()  # the next wave, soon after: waits for ``every``
    await eventually(lambda: len(calls) == 2)
    # The trims run in a worker thread, which may start a little late: the first one
    # late by more than the second makes the gap look short by that much (CI saw 0.29995).
    assert calls[1] - calls[0] >= 0.3 - 0.05
    memory.freed()
    memory.stop()  # the server stopping: no trim is left behind
    assert await stays_false(lambda: len(calls) > 2, seconds=0.5)
