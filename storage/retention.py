"""Retention in PostgreSQL: what is past its time goes, in one transaction, on one
instance at a time.

Every instance runs retention on a schedule; the transaction-scoped advisory lock lets
one of them do a round and the others skip it (they do not queue behind it: the next
round is theirs to try). The lock ends with the transaction, so a crashed instance
holds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from . import audit, images, update_log

# The key of retention's advisory lock ("modiretn" folded into a bigint's range): one
# value, shared by every instance, that no other lock of ours uses.
RETENTION_LOCK = 0x6D6F_6469_7265_746E

_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1::bigint)"


@dataclass(frozen=True, slots=True)
class Removed:
    audit_entries: int
    snapshots: int
    images: int


async def remove_expired(
    pool: asyncpg.Pool, *, audit_before: datetime, snapshots_before: datetime,
    images_before: datetime,
) -> Removed | None:
    """Delete audit entries logged before ``audit_before``, dated snapshots taken
    before ``snapshots_before`` and images (with their readings) uploaded before
    ``images_before``, all or nothing; None when another instance holds the lock (it is
    doing this round)."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(_TRY_LOCK, RETENTION_LOCK):
            return None
        entries = await audit.purge(conn, audit_before)
        snapshots = await update_log.purge_snapshots(conn, snapshots_before)
        removed_images = await images.purge(conn, images_before)
    return Removed(entries, snapshots, removed_images)
