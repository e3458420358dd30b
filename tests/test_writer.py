"""GroupCommitWriter on the real UpdateLog: group commit, order, durability, failures.

To make "what arrives meanwhile" deterministic, a test holds PostgreSQL's own table
lock on ``doc_updates``: the writer's INSERT really blocks in the database, updates
pile up behind it, and releasing the lock lets them through.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import pytest

from modi_sync.sync.writer import GroupCommitWriter, WriteFailed
from storage.update_log import UpdateLog
from storage.users import UserStore

from .yclient import eventually


class CountingLog(UpdateLog):
    """The real UpdateLog, remembering how many rows each batch it was given had."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self.batches: list[int] = []
        self.created: list[int] = []

    async def append_many(self, doc_ids: Sequence[int], updates: Sequence[bytes],
                          user_ids: Sequence[uuid.UUID] | None = None) -> list[int | None]:
        self.batches.append(len(updates))
        return await super().append_many(doc_ids, updates, user_ids)

    async def create_documents(self, keys: Sequence[tuple[uuid.UUID, str]]) -> list[int | None]:
        self.created.append(len(keys))
        return await super().create_documents(keys)


class Target:
    """A CommitTarget that records what the writer hands back.

    The writer stores bytes as they are, so this target's updates are opaque bytes and
    its merge joins them with ``+`` (a room merges Yjs updates: test_room.py).
    """

    def __init__(self, doc_id: int | None, key: tuple[uuid.UUID, str] | None = None) -> None:
        self.doc_id = doc_id
        # The writer stores a row under its document's key (owner, id): a document of
        # _new_doc's has its owner's key.
        self.key = key or (_OWNERS.get(doc_id, uuid.uuid4()), "default")
        self.committed_seqs: list[tuple[bytes, Any, int]] = []
        self.merged: list[int] = []  # how many updates each merge took
        self.failures = 0
        self.broken_fan_out = False

    def merge(self, updates: list[bytes]) -> bytes:
        self.merged.append(len(updates))
        return b"+".join(updates)

    def committed(self, update: bytes, origin: Any, seq: int) -> None:
        if self.broken_fan_out:
            raise RuntimeError("fan-out broke")
        self.committed_seqs.append((update, origin, seq))

    def updates(self) -> list[bytes]:
        """Every update handed back, merged ones split again, in order."""
        return [u for merged, _, _ in self.committed_seqs for u in merged.split(b"+")]

    def write_failed(self) -> None:
        self.failures += 1


@pytest.fixture
async def update_log(pool: asyncpg.Pool) -> CountingLog:
    return CountingLog(pool)


@pytest.fixture
async def make_writer(
    update_log: CountingLog,
) -> AsyncIterator[Callable[..., Awaitable[GroupCommitWriter]]]:
    writers: list[GroupCommitWriter] = []

    async def make(**kwargs: Any) -> GroupCommitWriter:
        writer = GroupCommitWriter(update_log, **kwargs)
        await writer.start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        await writer.stop()


@pytest.fixture(autouse=True)
async def _erase_opaque_documents(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """The writer stores bytes as given; these tests give it bytes that are no Yjs update.
    Erase them afterwards, so that no later test (a compaction of every document, say)
    finds them."""
    yield
    await pool.execute("DELETE FROM users WHERE email LIKE 'w-%@example.com'")


_OWNERS: dict[int | None, uuid.UUID] = {}  # the owner of each document _new_doc made


async def _new_doc(pool: asyncpg.Pool) -> int:
    user = await UserStore(pool).create(f"w-{uuid.uuid4().hex[:10]}@example.com", "x")
    doc_id = (await UpdateLog(pool).load(user.id, "default")).doc_id
    _OWNERS[doc_id] = user.id
    return doc_id


async def _rows(db: asyncpg.Connection, doc_id: int) -> list[bytes]:
    records = await db.fetch("SELECT data FROM doc_updates WHERE doc_id = $1 ORDER BY seq", doc_id)
    return [r["data"] for r in records]


async def _stored(db: asyncpg.Connection, doc_id: int) -> list[bytes]:
    """The updates in a document's rows, merged ones split again, in order."""
    return [u for row in await _rows(db, doc_id) for u in row.split(b"+")]


@contextlib.asynccontextmanager
async def table_locked(db: asyncpg.Connection, *, commit: bool = False) -> AsyncIterator[None]:
    """Hold an EXCLUSIVE lock on doc_updates: reads go on, inserts wait.

    With ``commit``, what ``db`` did meanwhile is committed as the lock is released.
    """
    tx = db.transaction()
    await tx.start()
    try:
        await db.execute("LOCK TABLE doc_updates IN EXCLUSIVE MODE")
        yield
    except BaseException:
        await tx.rollback()
        raise
    if commit:
        await tx.commit()
    else:
        await tx.rollback()


async def insert_is_waiting(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_locks WHERE relation = 'doc_updates'::regclass AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ))


async def test_updates_arriving_during_a_commit_share_the_next_round_trip_and_row(
    pool, update_log, make_writer, services, db
):
    writer = await make_writer()
    doc_id = await _new_doc(pool)
    target, other = Target(doc_id), Target(await _new_doc(pool))
    locker = await asyncpg.connect(services.database_url)
    try:
        async with table_locked(locker):
            first = writer.submit(target, b"u0", "o0")
            await eventually(lambda: insert_is_waiting(locker))
            # 99 concurrent senders while the first INSERT waits in PostgreSQL.

            async def send(i: int) -> int:
                await asyncio.sleep(0)
                if i % 10 == 0:  # one sender of the other document
                    return writer.submit(other, f"x{i}".encode(), "x")
                return writer.submit(target, f"u{i}".encode(), f"o{i}")

            tickets = await asyncio.gather(*(send(i) for i in range(1, 100)))
            assert writer.committed < first
        await asyncio.wait_for(writer.wait_committed(max(tickets)), 10)
    finally:
        await locker.close()

    # 100 updates, two round trips; the second stores one row per document.
    assert update_log.batches == [1, 2]
    mine = [f"u{i}".encode() for i in range(100) if i % 10 != 0 or i == 0]
    assert await _rows(db, doc_id) == [b"u0", b"+".join(mine[1:])]
    theirs = b"+".join(f"x{i}".encode() for i in range(10, 100, 10))
    assert await _rows(db, other.doc_id) == [theirs]
    assert (target.merged, other.merged) == ([90], [9])
    # Handed back as stored, each row with its rising sequence number; a merged
    # update from several senders has no origin (every peer gets it), one from a
    # single sender keeps it (that sender is skipped).
    assert [(u, o) for u, o, _ in target.committed_seqs] == [
        (b"u0", "o0"), (b"+".join(mine[1:]), None)]
    assert [(u, o) for u, o, _ in other.committed_seqs] == [(theirs, "x")]
    seqs = [s for _, _, s in target.committed_seqs]
    assert seqs[0] < seqs[1]


async def test_a_burst_of_concurrent_submits_takes_fewer_round_trips_than_updates(
    pool, update_log, make_writer, db
):
    """80 senders on 4 documents, each sending 5 updates one after the other."""
    writer = await make_writer()
    targets = [Target(await _new_doc(pool)) for _ in range(4)]
    order: list[tuple[int, bytes]] = []  # (ticket, update), as submitted

    async def sender(s: int) -> None:
        target = targets[s % 4]
        for k in range(5):
            update = f"{s}:{k}".encode()
            ticket = writer.submit(target, update, (s, k))
            order.append((ticket, update))
            await writer.wait_committed(ticket)

    await asyncio.gather(*(sender(s) for s in range(80)))

    assert len(update_log.batches) < 400 // 4, update_log.batches
    assert sum(update_log.batches) < 400  # a document's updates of one batch share a row
    assert [t for t, _ in order] == list(range(order[0][0], order[0][0] + 400))
    # Within each document the rows follow the submission order, and so does fan-out,
    # each row with a rising sequence number.
    for k, target in enumerate(targets):
        expected = [u for _, u in order if int(u.split(b":")[0]) % 4 == k]
        assert await _stored(db, target.doc_id) == expected
        assert target.updates() == expected
        seqs = [s for _, _, s in target.committed_seqs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_batches_are_capped_at_max_batch(pool, update_log, make_writer, services):
    writer = await make_writer(max_batch=8)
    target = Target(await _new_doc(pool))
    locker = await asyncpg.connect(services.database_url)
    try:
        async with table_locked(locker):
            writer.submit(target, b"first", None)
            await eventually(lambda: insert_is_waiting(locker))
            last = 0
            for i in range(30):
                last = writer.submit(target, b"%d" % i, None)
        await asyncio.wait_for(writer.wait_committed(last), 10)
    finally:
        await locker.close()
    assert target.merged == [8, 8, 8, 6]  # at most 8 updates per batch, merged
    assert target.updates() == [b"first"] + [b"%d" % i for i in range(30)]


async def test_wait_committed_returns_once_the_row_is_visible(pool, make_writer, services):
    writer = await make_writer()
    doc_id = await _new_doc(pool)
    target = Target(doc_id)
    observer = await asyncpg.connect(services.database_url)
    locker = await asyncpg.connect(services.database_url)
    try:
        async with table_locked(locker):
            ticket = writer.submit(target, b"durable", "me")
            waiting = asyncio.ensure_future(writer.wait_committed(ticket))
            await eventually(lambda: insert_is_waiting(locker))
            done, _ = await asyncio.wait({waiting}, timeout=0.2)
            assert not done  # not before PostgreSQL has it
            assert target.committed_seqs == []  # and no fan-out either
            assert await _rows(observer, doc_id) == []
        await asyncio.wait_for(waiting, 10)
        # The very moment it returns, another connection sees the row.
        assert await _rows(observer, doc_id) == [b"durable"]
        assert [u for u, _, _ in target.committed_seqs] == [b"durable"]
    finally:
        await locker.close()
        await observer.close()


async def test_wait_committed_for_a_stored_ticket_returns_at_once(pool, make_writer):
    writer = await make_writer()
    await asyncio.wait_for(writer.wait_committed(0), 1)
    ticket = writer.submit(Target(await _new_doc(pool)), b"x", None)
    await writer.wait_committed(ticket)
    assert writer.committed >= ticket
    await asyncio.wait_for(writer.wait_committed(ticket), 1)


async def test_stop_stores_everything_still_queued(pool, update_log, db):
    writer = GroupCommitWriter(update_log)
    await writer.start()
    target = Target(await _new_doc(pool))
    for i in range(50):
        writer.submit(target, b"%d" % i, None)
    await writer.stop()
    assert await _stored(db, target.doc_id) == [b"%d" % i for i in range(50)]
    assert target.updates() == [b"%d" % i for i in range(50)]


async def test_a_failed_batch_fails_its_waiters_and_the_writer_goes_on(
        pool, update_log, make_writer, services, db):
    writer = await make_writer()
    good = Target(await _new_doc(pool))
    bad = Target(2**63)  # PostgreSQL cannot take this id: the whole batch fails
    locker = await asyncpg.connect(services.database_url)
    try:
        async with table_locked(locker):
            writer.submit(good, b"before", None)
            await eventually(lambda: insert_is_waiting(locker))
            tickets = [writer.submit(good, b"same-batch", None),
                       writer.submit(bad, b"bad-1", None),
                       writer.submit(bad, b"bad-2", None)]
            waiters = [asyncio.ensure_future(writer.wait_committed(t)) for t in tickets]
            await asyncio.sleep(0)  # each waiter registers before the batch is tried
    finally:
        await locker.close()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
    assert all(isinstance(r, WriteFailed) for r in results), results
    assert (good.failures, bad.failures) == (1, 1)  # once per target, not per update
    assert await _rows(db, good.doc_id) == [b"before"]  # one transaction: nothing of it

    after = writer.submit(good, b"after", None)
    await asyncio.wait_for(writer.wait_committed(after), 10)
    assert await _rows(db, good.doc_id) == [b"before", b"after"]


async def test_an_update_of_a_deleted_document_is_dropped_and_the_rest_stored(
    pool, update_log, make_writer, services, db
):
    writer = await make_writer()
    alive, deleted = Target(await _new_doc(pool)), Target(await _new_doc(pool))
    locker = await asyncpg.connect(services.database_url)
    try:
        async with table_locked(locker, commit=True):
            writer.submit(alive, b"a0", None)
            await eventually(lambda: insert_is_waiting(locker))
            writer.submit(alive, b"a1", None)
            writer.submit(deleted, b"d1", None)
            last = writer.submit(alive, b"a2", None)
            # Deleted while its update waits in the queue.
            await locker.execute("DELETE FROM documents WHERE id = $1", deleted.doc_id)
    finally:
        await locker.close()
    await asyncio.wait_for(writer.wait_committed(last), 10)
    assert await _rows(db, alive.doc_id) == [b"a0", b"a1+a2"]
    assert [u for u, _, _ in alive.committed_seqs] == [b"a0", b"a1+a2"]
    # Nothing of it is sent on; its room is told to reset (it closes, clients reload).
    assert deleted.committed_seqs == [] and deleted.failures == 1
    assert alive.failures == 0


async def test_a_documents_first_update_makes_its_row_in_the_same_batch(
        pool, update_log, make_writer, db):
    users = [await UserStore(pool).create(f"w-{uuid.uuid4().hex[:10]}@example.com", "x")
             for _ in range(2)]
    new = [Target(None, (u.id, "fresh")) for u in users]
    writer = await make_writer()
    tickets = [writer.submit(t, f"first of {i}".encode(), None) for i, t in enumerate(new)]
    await writer.wait_committed(max(tickets))

    assert update_log.created == [2]  # one statement for both documents
    for i, (target, user) in enumerate(zip(new, users, strict=True)):
        assert target.doc_id == await db.fetchval(
            "SELECT id FROM documents WHERE user_id = $1 AND name = 'fresh'", user.id)
        assert await _rows(db, target.doc_id) == [f"first of {i}".encode()]
    # Known from now on: the next update of these documents makes no row.
    await writer.wait_committed(writer.submit(new[0], b"second", None))
    assert update_log.created == [2]


async def test_a_failing_fan_out_resets_its_room_and_the_writer_goes_on(
        pool, make_writer, db):
    writer = await make_writer()
    broken, fine = Target(await _new_doc(pool)), Target(await _new_doc(pool))
    broken.broken_fan_out = True
    first = writer.submit(broken, b"stored anyway", None)
    writer.submit(fine, b"also stored", None)
    await writer.wait_committed(first)
    assert broken.failures == 1
    assert await _rows(db, broken.doc_id) == [b"stored anyway"]
    later = writer.submit(fine, b"later", None)
    await asyncio.wait_for(writer.wait_committed(later), 10)  # the writer still runs
    assert [u for u, _, _ in fine.committed_seqs] == [b"also stored", b"later"]


async def test_a_new_document_of_a_deleted_user_fails_alone_not_the_batch(
    pool, update_log, make_writer, services, db
):
    """Issue 19: the foreign key of a deleted user's new document failed the whole group
    commit, and an unrelated user's socket closed with 1011."""
    writer = await make_writer()
    other = Target(await _new_doc(pool))
    gone_user = await UserStore(pool).create(f"w-{uuid.uuid4().hex[:10]}@example.com", "x")
    orphan, fresh = Target(None, (gone_user.id, "new")), Target(None, (uuid.uuid4(), "x"))
    mine = await UserStore(pool).create(f"w-{uuid.uuid4().hex[:10]}@example.com", "x")
    made = Target(None, (mine.id, "made"))
    locker = await asyncpg.connect(services.database_url)
    try:
        async with table_locked(locker, commit=True):
            writer.submit(other, b"o0", None)
            await eventually(lambda: insert_is_waiting(locker))
            # One batch: an existing document, two whose users are gone, one to make.
            writer.submit(other, b"o1", None)
            writer.submit(orphan, b"x", None)
            writer.submit(fresh, b"y", None)
            last = writer.submit(made, b"m", None)
            await locker.execute("DELETE FROM users WHERE id = $1", gone_user.id)
    finally:
        await locker.close()
    await asyncio.wait_for(writer.wait_committed(last), 10)
    assert await _rows(db, other.doc_id) == [b"o0", b"o1"]
    assert other.failures == 0 and made.failures == 0
    assert await _rows(db, made.doc_id) == [b"m"]
    assert (orphan.failures, fresh.failures) == (1, 1)
    assert orphan.committed_seqs == [] and fresh.committed_seqs == []


async def _append_waits_for_a_lock(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE '%INSERT INTO food_log_changes%' AND datname = current_database()"))


_LOCK_DOC = "SELECT 1 FROM documents WHERE user_id = $1 AND id = $2 FOR NO KEY UPDATE"


async def _row_locked(db: asyncpg.Connection, doc_id: int) -> bool:
    try:
        await db.execute(_LOCK_DOC + " NOWAIT", _OWNERS[doc_id], doc_id)
    except asyncpg.LockNotAvailableError:
        return True
    return False


async def test_a_batch_that_deadlocks_with_another_writer_is_stored_on_its_second_try(
        pool, services, db):
    """The batch locks its documents' counters as its plan meets them; another writer
    that locks two of them the other way round deadlocks with it. PostgreSQL aborts the
    batch's statement (the rival waits 30 s before looking for deadlocks), and it is run
    again and stored whole, once the rival is done."""
    if await db.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"):
        pytest.skip("on Citus the batch waits in the workers, out of this database's sight")
    docs = [await _new_doc(pool), await _new_doc(pool)]
    rival = await asyncpg.connect(services.database_url)
    deadlocked, runs = False, 0
    try:
        await rival.execute("SET deadlock_timeout = '30s'")
        for first, then in ((docs[1], docs[0]), (docs[0], docs[1])):
            async with rival.transaction():
                await rival.execute(_LOCK_DOC, _OWNERS[first], first)
                storing = asyncio.create_task(UpdateLog(pool).append_many(
                    docs, [b"a", b"b"], [_OWNERS[d] for d in docs]))
                await eventually(lambda: _append_waits_for_a_lock(db))
                if await _row_locked(db, then):  # the batch holds it: a cycle
                    deadlocked = True
                    await rival.execute(_LOCK_DOC, _OWNERS[then], then)
            runs += 1
            assert await asyncio.wait_for(storing, 30) == [runs, runs]
            if deadlocked:
                break
    finally:
        await rival.close()
    assert deadlocked, "the batch never held one counter while waiting for the other"
    assert await _rows(db, docs[0]) == [b"a"] * runs
    assert await _rows(db, docs[1]) == [b"b"] * runs
