"""Retention: removing what is kept no longer than its time (docs/gdpr.md, "Retention").

Audit entries older than ``audit_retention_days``, dated snapshots older than
``snapshot_retention_days`` (``0``: snapshots are off, so every one left goes), and
images with their readings older than ``image_retention_days``. The
command ``modi-sync retention run`` does one pass; every server also does one every
``retention_interval_seconds``, the first one interval after start-up (a fleet that
restarts together does not all try at once, and a start is not slowed by it). An
advisory lock in PostgreSQL lets one instance at a time do a pass; the others skip it
(storage/retention.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from aiohttp import web

from storage.retention import Removed, remove_expired

from .app_keys import SETTINGS, STORAGE
from .periodic import periodic
from .runtime import Storage

log = logging.getLogger(__name__)

# How long a stopping server waits for a pass under way to finish before cancelling it
# (which rolls its transaction back: nothing is half done).


async def retention_pass(storage: Storage, now: datetime | None = None) -> Removed | None:
    """One pass; None when another instance is doing this one."""
    settings = storage.settings
    now = now or datetime.now(UTC)
    return await remove_expired(
        storage.pool,
        audit_before=now - timedelta(days=settings.audit_retention_days),
        snapshots_before=now - timedelta(days=max(settings.snapshot_retention_days, 0)),
        images_before=now - timedelta(days=settings.image_retention_days),
    )


def summary(removed: Removed) -> str:
    return (f"removed {removed.audit_entries} audit entries, {removed.snapshots} snapshots, "
            f"{removed.images} images")


async def scheduled_retention(app: web.Application) -> AsyncIterator[None]:
    """An aiohttp ``cleanup_ctx``: a pass every ``retention_interval_seconds`` while the
    server runs (none with 0)."""
    storage = app[STORAGE]

    async def one_round() -> None:
        removed = await retention_pass(storage)
        if removed is None:
            log.debug("retention: another instance holds the lock; round skipped")
        elif removed.audit_entries or removed.snapshots or removed.images:
            log.info("retention: %s", summary(removed))

    async with periodic("scheduled retention", app[SETTINGS].retention_interval_seconds,
                        one_round):
        yield
