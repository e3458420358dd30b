"""The audit log: ``audit_log``, append-only.

Rows are only ever inserted. Retention deletes the old ones and erasure strips an
account's email and addresses from its entries; each does so in a transaction that
says what it is (``SET LOCAL modi.audit``), and a trigger refuses every other update or
delete (storage/migrations/003_gdpr.sql).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One action. ``ip`` is stored as given: the caller truncates it."""

    request_id: str
    action: str
    resource_type: str
    user_id: UUID | None = None
    resource_id: str | None = None
    email: str | None = None
    ip: str | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    id: int
    at: datetime
    entry: AuditEntry


_INSERT = """
INSERT INTO audit_log (request_id, action, resource_type, user_id, resource_id, email, ip,
                       details)
VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8::jsonb)
"""
_SELECT = """
SELECT id, at, request_id, action, resource_type, user_id, resource_id, email, ip, details
FROM audit_log
"""
_PAGE = _SELECT + "WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3"
_COUNT = "SELECT count(*) FROM audit_log WHERE user_id = $1"
_AFTER = _SELECT + "WHERE user_id = $1 AND id > $2 ORDER BY id LIMIT $3"
_STRIP = """
UPDATE audit_log SET email = NULL, ip = NULL
WHERE (user_id = $1 OR lower(email) = lower($2)) AND (email IS NOT NULL OR ip IS NOT NULL)
"""
_PURGE = "DELETE FROM audit_log WHERE at < $1"


def _stored(row: asyncpg.Record) -> StoredEntry:
    details = row["details"]
    return StoredEntry(row["id"], row["at"], AuditEntry(
        row["request_id"], row["action"], row["resource_type"], row["user_id"],
        row["resource_id"], row["email"], None if row["ip"] is None else str(row["ip"]),
        None if details is None else orjson.loads(details),
    ))


def _args(entry: AuditEntry) -> tuple[Any, ...]:
    details = None if entry.details is None else orjson.dumps(entry.details).decode()
    return (entry.request_id, entry.action, entry.resource_type, entry.user_id,
            entry.resource_id, entry.email, entry.ip, details)


async def append(conn: asyncpg.Connection | asyncpg.Pool, entry: AuditEntry) -> None:
    """Within the caller's transaction, when it has one (erasure)."""
    await conn.execute(_INSERT, *_args(entry))


async def strip(conn: asyncpg.Connection, user_id: UUID, email: str) -> int:
    """Erasure: the account's entries, and every entry naming its email, lose their
    email and address. Inside the erasure's transaction."""
    await conn.execute("SET LOCAL modi.audit = 'erasure'")
    status: str = await conn.execute(_STRIP, user_id, email)
    await conn.execute("SET LOCAL modi.audit = ''")
    return int(status.split()[-1])


async def purge(conn: asyncpg.Connection, older_than: datetime) -> int:
    """Retention: entries older than ``older_than`` go. Inside the caller's transaction."""
    await conn.execute("SET LOCAL modi.audit = 'retention'")
    status: str = await conn.execute(_PURGE, older_than)
    await conn.execute("SET LOCAL modi.audit = ''")
    return int(status.split()[-1])


class AuditLog:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(self, entry: AuditEntry) -> None:
        await append(self._pool, entry)

    async def page(self, user_id: UUID, limit: int, offset: int) -> tuple[list[StoredEntry], int]:
        """The user's entries, newest first, and how many there are."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_PAGE, user_id, limit, offset)
            total = await conn.fetchval(_COUNT, user_id)
        return [_stored(r) for r in rows], total

    async def after(self, user_id: UUID, after_id: int, limit: int) -> list[StoredEntry]:
        """At most ``limit`` of the user's entries, oldest first, past ``after_id``: for
        reading them all a page at a time (the export)."""
        return [_stored(r) for r in await self._pool.fetch(_AFTER, user_id, after_id, limit)]
