"""The popular list's tables: ``food_log_changes`` and ``food_log_counts`` (migration
004), and ``food_log_taken`` (008).

The group commit notes each document it wrote to (``update_log._APPEND``). The
aggregator (modi_sync/popular.py) takes the notes, reads those documents, and replaces
their rows of counts: how many times each document logged each food on each day. The
popular list is the sum of those rows over the last days.

A note taken moves to ``food_log_taken`` and leaves it in the transaction that writes
its document's counts. A pass that dies between the two (SIGKILL, a lost connection, a
read that failed) leaves its notes there, and the next pass notes them again first.

A pass runs on one instance at a time: a session advisory lock, held on the pass's own
connection for as long as the pass runs (it spans several transactions); the other
instances skip their round. A crashed instance's lock goes with its connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date
from uuid import UUID

import asyncpg

# The key of the aggregator's advisory lock ("modipopl" folded into a bigint's range).
POPULAR_LOCK = 0x6D6F_6469_706F_706C

_TRY_LOCK = "SELECT pg_try_advisory_lock($1::bigint)"
_UNLOCK = "SELECT pg_advisory_unlock($1::bigint)"

# Taking notes is a short transaction of its own (this and _KEEP), committed at once: a
# note deleted by a transaction still open would make every group commit that notes the
# same document wait for that transaction (the unique index), so it must not wait on the
# documents' reads. A document written after the take is noted again, for the next pass.
# No row lock picks the notes: the pass's advisory lock already keeps other passes
# out, and Citus refuses FOR UPDATE in a statement over many users' shards.
_TAKE = """
WITH taken AS (
    DELETE FROM food_log_changes WHERE (user_id, doc_id) IN (
        SELECT user_id, doc_id FROM food_log_changes LIMIT $1
    )
    RETURNING user_id, doc_id
)
SELECT d.id, d.user_id, d.name
FROM taken t JOIN documents d ON d.user_id = t.user_id AND d.id = t.doc_id
ORDER BY d.user_id, d.id
"""
# Kept in the take's transaction. Every statement names (user_id, doc_id), the tables'
# key; a document deleted meanwhile is left out.
_KEEP = """
INSERT INTO food_log_taken (user_id, doc_id)
SELECT d.user_id, d.id
FROM unnest($1::uuid[], $2::bigint[]) AS n(user_id, doc_id)
JOIN documents d ON d.user_id = n.user_id AND d.id = n.doc_id
ON CONFLICT DO NOTHING
"""
# What a dead pass took, noted again (the pass's advisory lock: no other pass is running).
_RESTORE = """
INSERT INTO food_log_changes (user_id, doc_id)
SELECT user_id, doc_id FROM food_log_taken ORDER BY user_id, doc_id
ON CONFLICT DO NOTHING
"""
_RESTORED = "DELETE FROM food_log_taken"
_DONE = """
DELETE FROM food_log_taken t
USING unnest($1::uuid[], $2::bigint[]) AS n(user_id, doc_id)
WHERE t.user_id = n.user_id AND t.doc_id = n.doc_id
"""
_CLEAR = """
DELETE FROM food_log_counts c
USING unnest($1::uuid[], $2::bigint[]) AS n(user_id, doc_id)
WHERE c.user_id = n.user_id AND c.doc_id = n.doc_id
"""
# The JOIN leaves out the rows of a document deleted since it was read.
_INSERT = """
INSERT INTO food_log_counts (user_id, doc_id, food_id, day, logs)
SELECT c.user_id, c.doc_id, c.food_id, c.day, c.logs
FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::date[], $5::int[])
    AS c(user_id, doc_id, food_id, day, logs)
JOIN documents d ON d.user_id = c.user_id AND d.id = c.doc_id
"""
_PRUNE = "DELETE FROM food_log_counts WHERE day < $1"
# Only foods that exist: an id a client made up (or a food since deleted) is no one's
# popular food. food_log_counts_day serves the range.
_POPULAR = """
SELECT c.food_id, sum(c.logs)::bigint AS logs
FROM food_log_counts c JOIN foods f ON f.id = c.food_id AND f.verified
WHERE c.day >= $1 AND c.day <= $2
GROUP BY c.food_id
ORDER BY logs DESC, c.food_id
LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class ChangedDocument:
    doc_id: int
    user_id: UUID
    name: str


@dataclass(frozen=True, slots=True)
class DayCount:
    food_id: UUID
    day: date
    logs: int


class CountsPass:
    """What a pass does, on the connection that holds the lock."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def restore(self) -> int:
        """Notes taken by a pass that did not finish are noted again; how many."""
        async with self._conn.transaction():
            status: str = await self._conn.execute(_RESTORE)
            await self._conn.execute(_RESTORED)
        return int(status.split()[-1])

    async def take_changed(self, limit: int) -> list[ChangedDocument]:
        """Up to ``limit`` noted documents, their notes moved to the taken ones
        (committed at once)."""
        async with self._conn.transaction():
            taken = [ChangedDocument(*r) for r in await self._conn.fetch(_TAKE, limit)]
            await self._conn.execute(_KEEP, [d.user_id for d in taken],
                                     [d.doc_id for d in taken])
        return taken

    async def replace(self, counts: dict[tuple[UUID, int], list[DayCount]],
                      taken: Sequence[ChangedDocument]) -> int:
        """Each document's rows become ``counts[(user_id, doc_id)]``, and the notes
        ``taken`` are done with, all in one transaction; how many rows were written."""
        user_ids, doc_ids, food_ids, days, logs = [], [], [], [], []
        for (user_id, doc_id), rows in counts.items():
            for row in rows:
                user_ids.append(user_id)
                doc_ids.append(doc_id)
                food_ids.append(row.food_id)
                days.append(row.day)
                logs.append(row.logs)
        async with self._conn.transaction():
            await self._conn.execute(_CLEAR, [u for u, _ in counts], [d for _, d in counts])
            status: str = await self._conn.execute(_INSERT, user_ids, doc_ids, food_ids, days,
                                                   logs)
            await self._conn.execute(_DONE, [d.user_id for d in taken], [d.doc_id for d in taken])
        return int(status.split()[-1])

    async def prune(self, before: date) -> int:
        """Rows of days before ``before`` go (the documents not written since)."""
        status: str = await self._conn.execute(_PRUNE, before)
        return int(status.split()[-1])


class FoodCounts:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[CountsPass | None]:
        """A pass of this instance's, or None while another instance runs one."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(_TRY_LOCK, POPULAR_LOCK):
                yield None
                return
            try:
                yield CountsPass(conn)
            finally:
                if not conn.is_closed():
                    await conn.fetchval(_UNLOCK, POPULAR_LOCK)

    async def popular(self, first: date, last: date, limit: int) -> list[tuple[UUID, int]]:
        """The ``limit`` foods logged most from ``first`` to ``last``, with their logs;
        most first, ties by food id."""
        return [(r[0], r[1]) for r in await self._pool.fetch(_POPULAR, first, last, limit)]
