"""Document loads in batches: one query for many documents, each with its own answer."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from modi_sync.sync.loader import DocumentLoader
from storage.update_log import UpdateLog
from storage.users import UserStore


@pytest.fixture
async def user_id(pool: asyncpg.Pool):  # noqa: ANN201
    user = await UserStore(pool).create(f"l-{uuid.uuid4().hex[:10]}@example.com", "x")
    yield user.id
    await pool.execute("DELETE FROM users WHERE id = $1", user.id)


async def test_one_batch_answers_each_document_on_its_own(pool, user_id):
    log = UpdateLog(pool)
    full = await log.load(user_id, "full")
    await log.append_many([full.doc_id] * 3, [b"one", b"two", b"three"])
    empty = await log.load(user_id, "empty")

    got = await log.load_many([
        (user_id, "full", False), (user_id, "missing", False), (user_id, "new", True),
        (user_id, "empty", True), (uuid.uuid4(), "full", False), (user_id, "new", True),
    ])
    assert got[0] is not None and (got[0].doc_id, got[0].updates) == (
        full.doc_id, [b"one", b"two", b"three"])
    assert got[1] is None
    assert got[2] is not None and got[2].updates == [] and got[2] == got[5]
    assert got[3] is not None and (got[3].doc_id, got[3].updates) == (empty.doc_id, [])
    assert got[4] is None  # someone else's id with the same name finds nothing
    assert await pool.fetchval(
        "SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 3


async def test_concurrent_batches_creating_the_same_documents_agree(pool, user_id):
    """Opposite orders: without a fixed insert order, PostgreSQL finds a deadlock."""
    log = UpdateLog(pool)
    for round_ in range(8):
        names = [f"d{round_}-{i}" for i in range(40)]
        first, second = await asyncio.gather(
            log.load_many([(user_id, n, True) for n in names]),
            log.load_many([(user_id, n, True) for n in reversed(names)]),
        )
        assert [d.doc_id for d in first] == [d.doc_id for d in reversed(second)]
    assert await pool.fetchval(
        "SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 8 * 40


async def test_the_loader_batches_concurrent_loads(pool, user_id):
    queries: list[int] = []

    class Counting(UpdateLog):
        async def load_many(self, wanted):  # noqa: ANN001, ANN202
            queries.append(len(wanted))
            return await super().load_many(wanted)

    loader = DocumentLoader(Counting(pool), max_batch=16)
    docs = await asyncio.gather(
        *(loader.load(user_id, f"b{i}", create=True) for i in range(40)))
    assert len({d.doc_id for d in docs}) == 40
    # The first load goes at once; the rest gather meanwhile, as full as allowed.
    assert queries == [1, 16, 16, 7]


async def test_a_failed_batch_fails_its_loads_and_the_next_batch_works(pool, user_id):
    loader = DocumentLoader(UpdateLog(pool))
    with pytest.raises(asyncpg.DataError):
        await asyncio.gather(loader.load(user_id, "ok", create=True),
                             loader.load(user_id, "bad\x00name", create=True))
    assert (await loader.load(user_id, "ok", create=True)).updates == []
