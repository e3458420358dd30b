"""The CRDT update log: ``documents`` and ``doc_updates``.

Each row is a Yjs v1 update: what one group commit stored for the document (its
accepted updates of that batch, merged). Rows are only ever appended, except by
compaction and erasure, so the log is the source of truth and a room in memory is a
cache of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from .database import DedicatedConnection

# Many documents in one statement, read only: each (user, name) that has a row comes
# back with its counter and its stored updates in order (one row with NULL data if it
# has none). A document's row is made with its first update (_MAKE_MANY), so opening a
# name nobody wrote to costs no write at all. Read in one snapshot, the counter covers
# exactly the updates read. Every join names user_id: the primary keys lead with it,
# and Citus routes a join only on its distribution column.
_LOAD_MANY = """
SELECT w.o, d.id, d.last_seq, u.data
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS w(user_id, name, o)
JOIN documents d ON d.user_id = w.user_id AND d.name = w.name
LEFT JOIN doc_updates u ON u.user_id = d.user_id AND u.doc_id = d.id
ORDER BY w.o, u.seq
"""

# The counters of many documents: how far each one's stored updates go (a catch-up
# reloads only the rooms behind them). Documents with no row are left out.
_COUNTERS_MANY = """
SELECT w.o, d.last_seq
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS w(user_id, name, o)
JOIN documents d ON d.user_id = w.user_id AND d.name = w.name
"""

# The names of the documents of many users, at most $2 each (the caller asks for one
# more than it keeps, to tell a list cut short). A window per user rather than a LIMIT
# in a lateral subquery, which Citus cannot push down to the shards ("Limit clause is
# currently unsupported when a lateral subquery references a column from a table
# function"); it reads each user's document rows, as _TOTALS_MANY does in the same batch.
_NAMES_MANY = """
SELECT user_id, name
FROM (SELECT user_id, name, row_number() OVER (PARTITION BY user_id) AS n
      FROM documents WHERE user_id = ANY($1::uuid[])) d
WHERE n <= $2
"""

# How many documents each of many users has, and their stored bytes.
_TOTALS_MANY = """
SELECT d.user_id, count(DISTINCT d.id), coalesce(sum(octet_length(u.data)), 0)::bigint
FROM documents d LEFT JOIN doc_updates u ON u.user_id = d.user_id AND u.doc_id = d.id
WHERE d.user_id = ANY($1::uuid[])
GROUP BY d.user_id
"""

# The ids of many documents, each made if it has no row. A document made by a
# concurrent transaction after this statement's snapshot is neither found nor made
# here: the caller asks again. New rows go in in (user, name) order: two batches (two
# instances) making some of the same documents then wait for each other in one order,
# never in a cycle (a deadlock).
#
# Making a row does not wait for its WAL flush (synchronous_commit off for this
# statement only): the row matters only once an update refers to it, and the update's
# own synchronous commit flushes the WAL up to and including the row.
_MAKE_MANY = """
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS w(user_id, name, o)
), relaxed AS (
    SELECT set_config('synchronous_commit', 'off', true)
), made AS (
    INSERT INTO documents (user_id, name)
    SELECT w.user_id, w.name FROM wanted w, relaxed
    ORDER BY w.user_id, w.name
    ON CONFLICT (user_id, name) DO NOTHING
    RETURNING id, user_id, name
)
SELECT w.o, d.id FROM wanted w JOIN documents d ON d.user_id = w.user_id AND d.name = w.name
UNION ALL
SELECT w.o, m.id FROM made m JOIN wanted w ON w.user_id = m.user_id AND w.name = m.name
"""

# One statement for a whole batch. Each document's counter gives its updates their
# seq, in batch order (a batch may hold several rows of one document): numbers no
# global sequence hands out, so one document's updates are ordered by the document's
# own row, on whatever node holds it. The UPDATE that moves a counter locks its row
# and, in READ COMMITTED, reads the newest value of a row another instance moved
# meanwhile, so two batches of one document get distinct seqs; a document deleted
# meanwhile is not found, and its updates are dropped (the statement returns no seq
# for them). The counters are locked in the order the plan meets their rows: on plain
# PostgreSQL an index scan of documents_id (id = ANY, one probe per document whatever
# the table's size) meets them in id order, so two instances writing some of the same
# documents wait for each other in one order. No plan promises that order, and on
# Citus each shard locks its own, so a deadlock stays possible: PostgreSQL then aborts
# one statement, and ``append_many`` runs it again. An explicit ordered lock (SELECT
# ... ORDER BY ... FOR UPDATE) would rule it out, but Citus takes row locks only in a
# statement on one shard, and a batch holds many users (docs/scaling.md).
#
# The same statement notes each document written to for the popular list's aggregator
# (food_log_changes, modi_sync/popular.py): in the updates' transaction at no extra
# round trip, and one row per document however often it is written. Notes go in in
# (user_id, doc_id) order, so two instances noting some of the same documents wait for
# each other in one order, never in a cycle.
_APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bytea[]) WITH ORDINALITY
        AS t(user_id, doc_id, data, o)
), counted AS MATERIALIZED (
    UPDATE documents d SET last_seq = d.last_seq + c.n
    FROM (SELECT user_id, doc_id, count(*) AS n FROM batch GROUP BY user_id, doc_id) c
    WHERE d.id = ANY($2::bigint[]) AND d.user_id = c.user_id AND d.id = c.doc_id
    RETURNING d.user_id, d.id, d.last_seq - c.n AS base
), numbered AS MATERIALIZED (
    SELECT b.user_id, b.doc_id, b.data, b.o,
           c.base + row_number() OVER (PARTITION BY b.user_id, b.doc_id ORDER BY b.o) AS seq
    FROM batch b JOIN counted c ON c.user_id = b.user_id AND c.id = b.doc_id
), noted AS (
    INSERT INTO food_log_changes (user_id, doc_id)
    SELECT user_id, id FROM counted ORDER BY user_id, id
    ON CONFLICT DO NOTHING
), stored AS (
    INSERT INTO doc_updates (user_id, doc_id, seq, data)
    SELECT user_id, doc_id, seq, data FROM numbered ORDER BY o
)
SELECT o, seq FROM numbered
"""

# A document known by its id alone (commands, tests): its owner, through documents_id.
# The server's own callers pass the owner and skip this.
_OWNER = "SELECT user_id FROM documents WHERE id = $1"
_USERS_EXISTING = "SELECT id FROM users WHERE id = ANY($1::uuid[])"

_INFO_SELECT = """
SELECT d.id, d.user_id, d.name,
       coalesce(sum(octet_length(u.data)), 0)::bigint AS size_bytes,
       count(u.seq) AS updates,
       greatest(d.created_at, max(u.created_at)) AS updated_at
FROM documents d LEFT JOIN doc_updates u ON u.user_id = d.user_id AND u.doc_id = d.id
"""
_LIST = _INFO_SELECT + """
WHERE d.user_id = $1 GROUP BY d.user_id, d.id ORDER BY d.name LIMIT $2 OFFSET $3
"""
_AFTER = _INFO_SELECT + """
WHERE d.user_id = $1 AND d.name > $2 GROUP BY d.user_id, d.id ORDER BY d.name LIMIT $3
"""
_COUNT = "SELECT count(*) FROM documents WHERE user_id = $1"
_INFO_ONE = _INFO_SELECT + "WHERE d.user_id = $1 AND d.name = $2 GROUP BY d.user_id, d.id"
_INFO_ALL = _INFO_SELECT + "GROUP BY d.user_id, d.id HAVING count(u.seq) >= $1 ORDER BY d.id"

_DELETE = "DELETE FROM documents WHERE user_id = $1 AND name = $2 RETURNING id"

# Compaction: one document at a time (the advisory lock), the rows read are exactly
# the rows replaced (a row committed meanwhile, whatever its seq, is kept), and the
# merged row takes the newest replaced seq, so the log keeps its order and no seq is
# ever given twice (the document's counter never goes back).
_COMPACT_LOCK = "SELECT pg_advisory_xact_lock(1668246644, $1::int)"
_COMPACT_READ = """
SELECT seq, data, created_at FROM doc_updates WHERE user_id = $1 AND doc_id = $2 ORDER BY seq
"""
_COMPACT_DELETE = """
DELETE FROM doc_updates WHERE user_id = $1 AND doc_id = $2 AND seq = ANY($3::bigint[])
"""
_COMPACT_INSERT = """
INSERT INTO doc_updates (user_id, doc_id, seq, data, created_at) VALUES ($1, $2, $3, $4, $5)
"""
# A snapshot only when the document has none newer than the interval ($5).
_SNAPSHOT_INSERT = """
INSERT INTO doc_snapshots (user_id, doc_id, cut_seq, data)
SELECT $1, $2, $3, $4 WHERE NOT EXISTS (
    SELECT 1 FROM doc_snapshots
    WHERE user_id = $1 AND doc_id = $2 AND taken_at > now() - $5::interval
)
"""
_SNAPSHOTS = """
SELECT id, taken_at, cut_seq, octet_length(data) AS size_bytes
FROM doc_snapshots WHERE user_id = $1 AND doc_id = $2 ORDER BY taken_at
"""
_SNAPSHOT_AT = """
SELECT taken_at, cut_seq, data FROM doc_snapshots
WHERE user_id = $1 AND doc_id = $2 AND taken_at <= $3 ORDER BY taken_at DESC LIMIT 1
"""
_ROWS_AFTER = """
SELECT data FROM doc_updates
WHERE user_id = $1 AND doc_id = $2 AND seq > $3 AND created_at <= $4 ORDER BY seq
"""
_PURGE_SNAPSHOTS = "DELETE FROM doc_snapshots WHERE taken_at < $1"
# One document's snapshots, all of them or all but its newest ($3). Under the
# compaction lock: no compaction of the document adds one while they go.
_PURGE_DOC_SNAPSHOTS = """
DELETE FROM doc_snapshots WHERE user_id = $1 AND doc_id = $2 AND id IS DISTINCT FROM (
    SELECT id FROM doc_snapshots WHERE user_id = $1 AND doc_id = $2 AND $3
    ORDER BY taken_at DESC, id DESC LIMIT 1
)
"""


@dataclass(frozen=True, slots=True)
class StoredDocument:
    doc_id: int
    updates: list[bytes]
    last_seq: int = 0  # the document's counter: its updates so far are numbered up to it


@dataclass(frozen=True, slots=True)
class StoredTotals:
    """What one user has stored: their documents and the bytes of their updates."""

    documents: int
    bytes: int


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    doc_id: int
    user_id: UUID
    name: str
    size_bytes: int
    updates: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Compaction:
    updates_before: int
    bytes_before: int
    updates_after: int
    bytes_after: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    taken_at: datetime
    cut_seq: int
    size_bytes: int


def _info(row: asyncpg.Record) -> DocumentInfo:
    return DocumentInfo(row["id"], row["user_id"], row["name"], row["size_bytes"],
                        row["updates"], row["updated_at"])


class UpdateLog:
    def __init__(self, pool: asyncpg.Pool | DedicatedConnection) -> None:
        self._pool = pool

    def dedicated(self) -> UpdateLog:
        """This log on one connection of its own, for a caller that runs one statement at
        a time (the writer, the loader); ``close`` it before the pool closes."""
        if isinstance(self._pool, DedicatedConnection):
            raise TypeError("already on a dedicated connection")
        return UpdateLog(DedicatedConnection(self._pool))

    async def close(self) -> None:
        """Give a dedicated connection back to the pool; nothing for a pool-wide log."""
        if isinstance(self._pool, DedicatedConnection):
            await self._pool.close()

    async def warm_up(self) -> None:
        """Plan the load, make, append, names and totals statements now, not on the first
        client's clock."""
        async with self._pool.acquire() as conn:
            await conn.fetch(_LOAD_MANY, [], [])
            await conn.fetch(_MAKE_MANY, [], [])
            await conn.fetch(_APPEND, [], [], [])
            await conn.fetch(_NAMES_MANY, [], 0)
            await conn.fetch(_TOTALS_MANY, [])

    async def load(self, user_id: UUID, name: str, *, create: bool = True) -> StoredDocument | None:
        """The user's document ``name`` and its stored updates; None if it has no row.

        With ``create`` a document without a row gets one (for commands and tests; the
        server makes rows with their first update, see ``create_documents``).
        """
        stored = (await self.load_many([(user_id, name)]))[0]
        if stored is None and create and (await self.create_documents([(user_id, name)]))[0]:
            stored = (await self.load_many([(user_id, name)]))[0]
        return stored

    async def load_many(self, wanted: Sequence[tuple[UUID, str]]) -> list[StoredDocument | None]:
        """``load`` for many (user, name) at once, in one round trip."""
        result: list[StoredDocument | None] = [None] * len(wanted)
        rows = await self._pool.fetch(_LOAD_MANY, [u for u, _ in wanted], [n for _, n in wanted])
        for o, doc_id, last_seq, data in rows:
            stored = result[o - 1]
            if stored is None:
                stored = result[o - 1] = StoredDocument(doc_id, [], last_seq)
            if data is not None:
                stored.updates.append(data)
        return result

    async def names_many(
        self, user_ids: Sequence[UUID], most: int
    ) -> dict[UUID, list[str] | None]:
        """The names of each user's documents; None for a user with more than ``most``."""
        names: dict[UUID, list[str] | None] = {u: [] for u in user_ids}
        for user_id, name in await self._pool.fetch(_NAMES_MANY, list(user_ids), most + 1):
            listed = names[user_id]
            if listed is not None:
                listed.append(name)
                if len(listed) > most:
                    names[user_id] = None
        return names

    async def totals_many(self, user_ids: Sequence[UUID]) -> dict[UUID, StoredTotals]:
        """Each user's stored totals (users with nothing stored get zeros)."""
        totals = dict.fromkeys(user_ids, StoredTotals(0, 0))
        for user_id, documents, size in await self._pool.fetch(_TOTALS_MANY, list(user_ids)):
            totals[user_id] = StoredTotals(documents, size)
        return totals

    async def create_documents(self, keys: Sequence[tuple[UUID, str]]) -> list[int | None]:
        """The ids of these (user, name) documents, each made if it has no row yet;
        None for a document whose user no longer exists (deleted meanwhile)."""
        ids: dict[int, int | None] = {}
        todo = list(range(len(keys)))
        async with self._pool.acquire() as conn:
            while todo:
                try:
                    rows = await conn.fetch(_MAKE_MANY, [keys[i][0] for i in todo],
                                            [keys[i][1] for i in todo])
                except asyncpg.ForeignKeyViolationError:
                    rows = []  # a user was deleted while the statement ran: look again
                for o, doc_id in rows:
                    ids[todo[o - 1]] = doc_id
                todo = [i for i in todo if i not in ids]  # a concurrent insert won, or ...
                if todo:  # ... the user is gone: no row can ever be made for them
                    users = await conn.fetch(_USERS_EXISTING, list({keys[i][0] for i in todo}))
                    alive = {r[0] for r in users}
                    ids.update((i, None) for i in todo if keys[i][0] not in alive)
                    todo = [i for i in todo if i not in ids]
        return [ids[i] for i in range(len(keys))]

    async def list_documents(
        self, user_id: UUID, limit: int, offset: int
    ) -> tuple[list[DocumentInfo], int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_LIST, user_id, limit, offset)
            total = await conn.fetchval(_COUNT, user_id)
        return [_info(r) for r in rows], total

    async def documents_after(self, user_id: UUID, after: str, limit: int) -> list[DocumentInfo]:
        """At most ``limit`` of the user's documents, by name, the first after ``after``."""
        return [_info(r) for r in await self._pool.fetch(_AFTER, user_id, after, limit)]

    async def info(self, user_id: UUID, name: str) -> DocumentInfo | None:
        row = await self._pool.fetchrow(_INFO_ONE, user_id, name)
        return None if row is None else _info(row)

    async def documents_with(self, min_updates: int) -> list[DocumentInfo]:
        """Every document with at least ``min_updates`` stored updates."""
        return [_info(r) for r in await self._pool.fetch(_INFO_ALL, min_updates)]

    async def delete_document(self, user_id: UUID, name: str) -> int | None:
        """Erase a document and its whole history; its id, or None if there was none."""
        doc_id: int | None = await self._pool.fetchval(_DELETE, user_id, name)
        return doc_id

    async def owner(self, doc_id: int) -> UUID | None:
        """The user whose document has this id; None if there is none."""
        owner: UUID | None = await self._pool.fetchval(_OWNER, doc_id)
        return owner

    async def _key(self, doc_id: int, user_id: UUID | None) -> tuple[UUID, int]:
        # Every statement below names the owner: it leads the tables' keys.
        if user_id is None:
            user_id = await self.owner(doc_id)
            if user_id is None:  # no such document: statements that name it find nothing
                return UUID(int=0), doc_id
        return user_id, doc_id

    async def compact(
        self,
        doc_id: int,
        merge: Callable[[list[bytes]], Awaitable[bytes]],
        *,
        snapshot_every: timedelta | None,
        dry_run: bool = False,
        user_id: UUID | None = None,
    ) -> Compaction:
        """Replace the document's stored updates with ``merge(updates)``, in one transaction.

        With ``snapshot_every``, the result is also kept as a dated snapshot unless the
        document already has one that recent (``timedelta(0)``: always). ``user_id``,
        the document's owner, saves a lookup by id.
        """
        user_id, doc_id = await self._key(doc_id, user_id)
        keep_snapshot = snapshot_every is not None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_COMPACT_LOCK, doc_id % 2**31)
            rows = await conn.fetch(_COMPACT_READ, user_id, doc_id)
            before = sum(len(r["data"]) for r in rows)
            if not rows or (len(rows) == 1 and not keep_snapshot):
                return Compaction(len(rows), before, len(rows), before)
            merged = await merge([r["data"] for r in rows])
            if dry_run:
                return Compaction(len(rows), before, 1, len(merged))
            cut = rows[-1]["seq"]
            await conn.execute(_COMPACT_DELETE, user_id, doc_id, [r["seq"] for r in rows])
            await conn.execute(_COMPACT_INSERT, user_id, doc_id, cut, merged,
                               rows[-1]["created_at"])
            if keep_snapshot:
                await conn.execute(_SNAPSHOT_INSERT, user_id, doc_id, cut, merged,
                                   snapshot_every)
        return Compaction(len(rows), before, 1, len(merged))

    async def snapshots(self, doc_id: int, user_id: UUID | None = None) -> list[Snapshot]:
        user_id, doc_id = await self._key(doc_id, user_id)
        return [Snapshot(**dict(r)) for r in await self._pool.fetch(_SNAPSHOTS, user_id, doc_id)]

    async def updates_as_of(self, doc_id: int, at: datetime,
                            user_id: UUID | None = None) -> list[bytes]:
        """The updates that made the document as it was at ``at``, as far as kept.

        The newest snapshot taken by then, plus the updates stored after its cut and
        by ``at`` that no later compaction has merged away.
        """
        user_id, doc_id = await self._key(doc_id, user_id)
        async with self._pool.acquire() as conn:
            snap = await conn.fetchrow(_SNAPSHOT_AT, user_id, doc_id, at)
            cut = snap["cut_seq"] if snap else 0
            rows = await conn.fetch(_ROWS_AFTER, user_id, doc_id, cut, at)
        return ([snap["data"]] if snap else []) + [r[0] for r in rows]

    async def purge_snapshots(self, older_than: datetime) -> int:
        async with self._pool.acquire() as conn:
            return await purge_snapshots(conn, older_than)

    async def purge_document_snapshots(self, doc_id: int, *, keep_latest: bool,
                                       user_id: UUID | None = None) -> int:
        """Drop the document's dated snapshots, but its newest with ``keep_latest``; how
        many went. For erasing one entry: the caller has just compacted the document, so
        its newest snapshot (if that compaction kept one) holds nothing deleted before."""
        user_id, doc_id = await self._key(doc_id, user_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_COMPACT_LOCK, doc_id % 2**31)
            status: str = await conn.execute(_PURGE_DOC_SNAPSHOTS, user_id, doc_id, keep_latest)
        return int(status.split()[-1])

    async def counters_many(self, keys: Sequence[tuple[UUID, str]]) -> list[int | None]:
        """Each (user, name) document's counter, in one round trip; None for one with
        no row (nothing stored)."""
        counters: list[int | None] = [None] * len(keys)
        rows = await self._pool.fetch(_COUNTERS_MANY, [u for u, _ in keys], [n for _, n in keys])
        for o, last_seq in rows:
            counters[o - 1] = last_seq
        return counters

    async def append_many(
        self, doc_ids: Sequence[int], updates: Sequence[bytes],
        user_ids: Sequence[UUID] | None = None,
    ) -> list[int | None]:
        """Store a batch of updates in one statement (one round trip, one transaction).

        Returns their seqs in batch order, each the next of its document's counter; None
        for an update whose document was deleted meanwhile (it is dropped, and the rest
        still stored). ``user_ids``, the documents' owners: the server always passes
        them; without them (tools, tests) each owner is looked up by id first.
        """
        if user_ids is None:
            user_ids = [(await self._key(d, None))[0] for d in doc_ids]
        args = (list(user_ids), list(doc_ids), list(updates))
        try:
            rows = await self._pool.fetch(_APPEND, *args)
        except asyncpg.DeadlockDetectedError:
            # Its own transaction was rolled back whole, and the other one goes on:
            # again, it waits for that one instead (the lock order above).
            rows = await self._pool.fetch(_APPEND, *args)
        seqs: list[int | None] = [None] * len(doc_ids)
        for o, seq in rows:
            seqs[o - 1] = seq
        return seqs


async def purge_snapshots(conn: asyncpg.Connection, older_than: datetime) -> int:
    """Retention: every document's snapshots taken before ``older_than`` go. Within the
    caller's transaction, if it has one."""
    status: str = await conn.execute(_PURGE_SNAPSHOTS, older_than)
    return int(status.split()[-1])
