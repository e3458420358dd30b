"""Document loads in batches: one query for many documents, each with its own answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from modi_sync.sync.loader import DocumentLoader, LoaderStopped
from storage.doc_events import DocKey
from storage.update_log import StoredDocument, UpdateLog
from storage.users import UserStore

from .yclient import eventually


@pytest.fixture
async def user_id(pool: asyncpg.Pool) -> AsyncIterator[uuid.UUID]:
    user = await UserStore(pool).create(f"l-{uuid.uuid4().hex[:10]}@example.com", "x")
    yield user.id
    await pool.execute("DELETE FROM users WHERE id = $1", user.id)


async def test_one_batch_answers_each_document_on_its_own(pool, user_id):
    update_log = UpdateLog(pool)
    full = await update_log.load(user_id, "full")
    await update_log.append_many([full.doc_id] * 3, [b"one", b"two", b"three"])
    empty = await update_log.load(user_id, "empty")

    got = await update_log.load_many([
        (user_id, "full"), (user_id, "missing"), (user_id, "empty"), (uuid.uuid4(), "full"),
        (user_id, "full"),
    ])
    assert got[0] is not None and (got[0].doc_id, got[0].updates) == (
        full.doc_id, [b"one", b"two", b"three"])
    assert got[1] is None  # no row: nobody stored anything in it
    assert got[2] is not None and (got[2].doc_id, got[2].updates) == (empty.doc_id, [])
    assert got[3] is None  # someone else's id with the same name finds nothing
    assert got[4] == got[0]


async def test_the_names_of_many_users_documents_in_one_query(pool, user_id):
    update_log = UpdateLog(pool)
    await update_log.create_documents([(user_id, n) for n in ("a", "b", "c")])
    other = uuid.uuid4()  # no such user: no documents
    names = await update_log.names_many([user_id, other], 3)
    assert sorted(names[user_id]) == ["a", "b", "c"] and names[other] == []
    # More than asked for is no list at all: a list cut short would hide documents.
    assert await update_log.names_many([user_id, other], 2) == {user_id: None, other: []}


async def test_reading_a_document_makes_no_row(pool, user_id):
    update_log = UpdateLog(pool)
    assert await update_log.load_many([(user_id, "read-only")]) == [None]
    assert await update_log.load(user_id, "read-only", create=False) is None
    assert await pool.fetchval(
        "SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 0


async def test_concurrent_batches_creating_the_same_documents_agree(pool, user_id):
    """Opposite orders: without a fixed insert order, PostgreSQL finds a deadlock."""
    update_log = UpdateLog(pool)
    for round_ in range(8):
        keys = [(user_id, f"d{round_}-{i}") for i in range(40)]
        first, second = await asyncio.gather(
            update_log.create_documents(keys), update_log.create_documents(list(reversed(keys))))
        assert first == list(reversed(second))
        assert [d.doc_id for d in await update_log.load_many(keys)] == first
    assert await pool.fetchval(
        "SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 8 * 40


class Answers:
    """Collects a loader's answers and lets a test wait for them."""

    def __init__(self) -> None:
        self.got: dict[tuple[uuid.UUID, str], object] = {}
        self.calls = 0

    def done(self, key: tuple[uuid.UUID, str], result: object) -> None:
        self.calls += 1
        self.got[key] = result

    async def wait(self, count: int) -> None:
        await eventually(lambda: self.calls >= count)


async def test_the_loader_batches_concurrent_loads(pool, user_id):
    queries: list[int] = []

    class Counting(UpdateLog):
        async def load_many(self, wanted: Sequence[DocKey]) -> list[StoredDocument | None]:
            queries.append(len(wanted))
            return await super().load_many(wanted)

    update_log = Counting(pool)
    ids = await update_log.create_documents([(user_id, f"b{i}") for i in range(20)])
    answers = Answers()
    loader = DocumentLoader(update_log, answers.done, max_batch=16)
    queries.clear()
    for i in range(40):
        loader.load((user_id, f"b{i}"))
    await answers.wait(40)
    assert [answers.got[(user_id, f"b{i}")].doc_id for i in range(20)] == ids
    assert [answers.got[(user_id, f"b{i}")] for i in range(20, 40)] == [None] * 20  # no row
    # The first load goes at once; the rest gather meanwhile, as full as allowed.
    assert queries == [1, 16, 16, 7]


async def test_a_failed_batch_fails_its_loads_and_the_next_batch_works(pool, user_id):
    answers = Answers()
    loader = DocumentLoader(UpdateLog(pool), answers.done)
    await UpdateLog(pool).create_documents([(user_id, "ok")])
    loader.load((user_id, "first"))
    loader.load((user_id, "ok"))
    loader.load((user_id, "bad\x00name"))  # in the second batch, with "ok"
    await answers.wait(3)
    assert answers.got[(user_id, "first")] is None
    assert isinstance(answers.got[(user_id, "ok")], asyncpg.DataError)
    assert isinstance(answers.got[(user_id, "bad\x00name")], asyncpg.DataError)
    loader.load((user_id, "ok"))
    await answers.wait(4)
    assert answers.got[(user_id, "ok")].updates == []


async def test_a_failing_callback_does_not_strand_the_other_loads(pool, user_id):
    seen: list[str] = []

    def done(key: DocKey, result: object) -> None:
        seen.append(key[1])
        if key[1] == "boom":
            raise RuntimeError("a caller's bug")

    loader = DocumentLoader(UpdateLog(pool), done)
    loader.load((user_id, "first"))
    loader.load((user_id, "boom"))
    loader.load((user_id, "after"))
    await eventually(lambda: len(seen) == 3)
    assert seen == ["first", "boom", "after"]


async def test_a_slow_handover_lets_the_event_loop_run_between_loads(pool, user_id):
    """A catch-up's callbacks re-apply whole documents: a batch of them must not hold the
    event loop until the last is done."""
    handed: list[str] = []

    def done(key: DocKey, result: object) -> None:
        time.sleep(0.003)  # stands for the CPU a catch-up's apply of a large room takes
        handed.append(key[1])

    loader = DocumentLoader(UpdateLog(pool), done)
    for i in range(10):
        loader.load((user_id, f"d{i}"))
    await eventually(lambda: bool(handed))  # the handover has begun
    # Another task gets a turn while loads of the same batch are still to be handed over.
    assert len(handed) < 10
    await eventually(lambda: len(handed) == 10)
    assert handed == [f"d{i}" for i in range(10)]


async def test_stop_waits_for_the_batch_under_way_and_later_loads_fail(pool, user_id):
    answers = Answers()
    loader = DocumentLoader(UpdateLog(pool), answers.done)
    await UpdateLog(pool).create_documents([(user_id, "kept")])
    loader.load((user_id, "kept"))  # its batch starts at once
    loader.load((user_id, "queued"))  # waits for the next batch, which never starts
    await loader.stop()
    assert answers.got[(user_id, "kept")].updates == []  # answered before stop returned
    assert isinstance(answers.got[(user_id, "queued")], LoaderStopped)
    loader.load((user_id, "late"))
    assert isinstance(answers.got[(user_id, "late")], LoaderStopped)
