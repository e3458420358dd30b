"""Erasing an account in PostgreSQL: one transaction, so a crash midway leaves the
account whole or gone, never half.

In it: the user's unverified food contributions are deleted (verified ones stay, their
author forgotten by ``ON DELETE SET NULL``); the user's audit entries, and every entry
that names their email, lose the email and the address; the deletion itself is
logged; and the users row goes, taking with it (``ON DELETE CASCADE``) the documents,
their updates and snapshots, and the consents.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from . import audit, foods
from .audit import AuditEntry

_LOCK_USER = "SELECT email FROM users WHERE id = $1 FOR UPDATE"
_DELETE_USER = "DELETE FROM users WHERE id = $1"


@dataclass(frozen=True, slots=True)
class Erased:
    email: str
    foods_deleted: int
    audit_entries_stripped: int


async def erase_account(pool: asyncpg.Pool, user_id: UUID, logged: AuditEntry) -> Erased | None:
    """Erase the account and log ``logged`` (which must hold no email or address), all
    or nothing; None if there was no such account."""
    async with pool.acquire() as conn, conn.transaction():
        email = await conn.fetchval(_LOCK_USER, user_id)
        if email is None:
            return None
        dropped = await foods.drop_unverified(conn, user_id)
        stripped = await audit.strip(conn, user_id, email)
        await audit.append(conn, logged)
        await conn.execute(_DELETE_USER, user_id)
    return Erased(email, dropped, stripped)
