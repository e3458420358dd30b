"""The CRDT update log: ``documents`` and ``doc_updates``.

Every accepted Yjs update is one row. Rows are only ever appended, except by compaction
and erasure, so the log is the source of truth and a room in memory is a cache of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

_DOCUMENT_ID = """
WITH found AS (
    SELECT id FROM documents WHERE user_id = $1 AND name = $2
), made AS (
    INSERT INTO documents (user_id, name)
    SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT (user_id, name) DO NOTHING
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM made
"""

# One statement for a whole batch: the rows keep the batch order, so sequence numbers
# rise in the order the updates were applied.
_APPEND = """
INSERT INTO doc_updates (doc_id, data)
SELECT d, u FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS t(d, u, o)
ORDER BY o
RETURNING seq
"""

_EXISTING = "SELECT id FROM documents WHERE id = ANY($1::bigint[])"

_LOAD = "SELECT data FROM doc_updates WHERE doc_id = $1 ORDER BY seq"


@dataclass(frozen=True, slots=True)
class StoredDocument:
    doc_id: int
    updates: list[bytes]

    @property
    def size_bytes(self) -> int:
        return sum(len(u) for u in self.updates)


class UpdateLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load(self, user_id: UUID, name: str) -> StoredDocument:
        """The user's document ``name`` (created on first use) and its stored updates."""
        async with self._pool.acquire() as conn:
            doc_id = None
            while doc_id is None:  # None only when a concurrent insert won the race
                doc_id = await conn.fetchval(_DOCUMENT_ID, user_id, name)
            rows = await conn.fetch(_LOAD, doc_id)
        return StoredDocument(doc_id, [r[0] for r in rows])

    async def append_many(self, doc_ids: list[int], updates: list[bytes]) -> list[int | None]:
        """Store a batch of updates in one round trip and one transaction.

        Returns their sequence numbers in batch order; None for an update whose
        document was deleted meanwhile (it is dropped, and the rest still stored).
        """
        try:
            rows = await self._pool.fetch(_APPEND, doc_ids, updates)
            return sorted(r[0] for r in rows)
        except asyncpg.ForeignKeyViolationError:
            pass
        alive = {r[0] for r in await self._pool.fetch(_EXISTING, doc_ids)}
        keep = [i for i, d in enumerate(doc_ids) if d in alive]
        rows = await self._pool.fetch(
            _APPEND, [doc_ids[i] for i in keep], [updates[i] for i in keep]
        )
        seqs: list[int | None] = [None] * len(doc_ids)
        for i, seq in zip(keep, sorted(r[0] for r in rows), strict=True):
            seqs[i] = seq
        return seqs
