"""Consents: ``consents``, every acceptance and withdrawal of the privacy policy and
the terms, in order. A row is never changed; the newest per document is the state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

DOCUMENTS = ("privacy_policy", "terms")


@dataclass(frozen=True, slots=True)
class Consent:
    id: int
    document: str  # one of DOCUMENTS
    version: str | None  # None: withdrawn
    at: datetime


_INSERT = "INSERT INTO consents (user_id, document, version) VALUES ($1, $2, $3)"
_CURRENT = """
SELECT DISTINCT ON (document) id, document, version, at FROM consents
WHERE user_id = $1 ORDER BY document, id DESC
"""
_HISTORY = """
SELECT id, document, version, at FROM consents WHERE user_id = $1
ORDER BY id DESC LIMIT $2 OFFSET $3
"""
_COUNT = "SELECT count(*) FROM consents WHERE user_id = $1"
_AFTER = """
SELECT id, document, version, at FROM consents WHERE user_id = $1 AND id > $2
ORDER BY id LIMIT $3
"""
# The caller's own transaction: changes of one user are made one at a time.
_LOCK = "SELECT pg_advisory_xact_lock(1668246645, hashtext($1::uuid::text))"


def _consent(row: asyncpg.Record) -> Consent:
    return Consent(row["id"], row["document"], row["version"], row["at"])


async def record(conn: asyncpg.Connection, user_id: UUID,
                 changes: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Record each (document, version or None) that differs from the current state;
    return those recorded. Inside the caller's transaction."""
    await conn.execute(_LOCK, user_id)
    current = {r["document"]: r["version"] for r in await conn.fetch(_CURRENT, user_id)}
    # A withdrawal of what was never accepted is still recorded: it is an objection.
    made = [(doc, version) for doc, version in changes
            if doc not in current or current[doc] != version]
    for doc, version in made:
        await conn.execute(_INSERT, user_id, doc, version)
    return made


class ConsentStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def change(self, user_id: UUID,
                     changes: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
        async with self._pool.acquire() as conn, conn.transaction():
            return await record(conn, user_id, changes)

    async def current(self, user_id: UUID) -> dict[str, Consent]:
        return {c.document: c for c in map(_consent, await self._pool.fetch(_CURRENT, user_id))}

    async def history(self, user_id: UUID, limit: int, offset: int) -> tuple[list[Consent], int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_HISTORY, user_id, limit, offset)
            total = await conn.fetchval(_COUNT, user_id)
        return [_consent(r) for r in rows], total

    async def after(self, user_id: UUID, after_id: int, limit: int) -> list[Consent]:
        return [_consent(r) for r in await self._pool.fetch(_AFTER, user_id, after_id, limit)]
