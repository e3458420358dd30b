"""RoomRegistry: one load per document however many wait, on the real UpdateLog."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest

from modi_sync.sync.registry import DocumentNotFound, RoomRegistry
from modi_sync.sync.writer import GroupCommitWriter
from storage.update_log import UpdateLog
from storage.users import UserStore


class CountingLog(UpdateLog):
    """The real update log; counts the documents each load query asked for."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.queries: list[int] = []
        self.fail_next = False

    async def load_many(self, wanted):  # noqa: ANN001, ANN201
        self.queries.append(len(wanted))
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database went away")
        return await super().load_many(wanted)


@pytest.fixture
async def log(pool: asyncpg.Pool) -> CountingLog:
    return CountingLog(pool)


@pytest.fixture
async def registry(log: CountingLog) -> AsyncIterator[RoomRegistry]:
    writer = GroupCommitWriter(log)
    await writer.start()
    registry = RoomRegistry(log, writer, idle_seconds=30, max_document_bytes=1 << 20,
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


async def test_concurrent_callers_share_one_load_and_one_room(registry, log, user_id):
    key = (user_id, "shared")
    rooms = await asyncio.gather(*(registry.get(key) for _ in range(5)))
    assert all(room is rooms[0] for room in rooms)
    assert log.queries == [1]
    assert await registry.get(key) is rooms[0]  # in memory now: no query
    assert log.queries == [1]


async def test_a_reader_of_a_missing_document_is_told_so_while_a_writer_gets_the_room(
    registry, log, user_id,
):
    key = (user_id, "never-written")
    reader, writer = await asyncio.gather(
        registry.get(key, create=False), registry.get(key), return_exceptions=True)
    assert isinstance(reader, DocumentNotFound)
    assert writer is registry.rooms[key]
    assert log.queries == [1]
    alone = (user_id, "read-only")
    with pytest.raises(DocumentNotFound):
        await registry.get(alone, create=False)
    assert alone not in registry.rooms  # reading makes no room


async def test_a_caller_that_gives_up_leaves_the_load_to_the_others(registry, log, user_id):
    key = (user_id, "impatient")
    impatient = asyncio.ensure_future(registry.get(key))
    patient = asyncio.ensure_future(registry.get(key))
    await asyncio.sleep(0)  # both are waiting for the one load
    impatient.cancel()
    room = await patient
    assert impatient.cancelled()
    assert registry.rooms[key] is room
    assert log.queries == [1]


async def test_a_failed_load_fails_every_caller_and_pins_nothing(registry, log, user_id):
    key = (user_id, "flaky")
    log.fail_next = True
    results = await asyncio.gather(registry.get(key), registry.get(key), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert key not in registry.rooms
    room = await registry.get(key)  # the next caller loads again
    assert registry.rooms[key] is room
    assert log.queries == [1, 1]
