"""The popular list: the foods logged most, across all users, over the last 30 days
(docs/foods.md, "Popular and recent").

Counting every document's ``food_logs`` at each request would read every document. So
the group commit notes each document it writes to (storage/update_log.py), and a
background pass (``PopularAggregator.run_once``) takes the notes, reads only those
documents, counts their entries per (food, day), and replaces their rows of counts
(storage/food_counts.py); ``popular_food_ids`` sums the rows. A document never written
again keeps its rows, which age out of the window; a deleted one loses them with it
(ON DELETE CASCADE).

Every server runs a pass every ``popular_interval_seconds`` (60: the list is fresh
within a few minutes), the first one an interval after start-up; one instance at a
time (an advisory lock), the others skip their round. The notes a pass takes are kept
until their counts are written: a pass that fails, is cancelled at shutdown or dies
with its process leaves them for the next, which notes them again first.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from storage.food_cache import bump_popular_version
from storage.food_counts import ChangedDocument, CountsPass, DayCount, FoodCounts

from .app_keys import DOCUMENTS, POOL, REDIS, SETTINGS
from .documents import Documents
from .food_log_entries import entry_day, food_uuid
from .periodic import periodic

log = logging.getLogger(__name__)

WINDOW_DAYS = 30
# Days after today (UTC) still counted: a user east of UTC is already in tomorrow. Later
# days are ignored, or an entry dated 2099 would count for ever.
_AHEAD_DAYS = 1
TAKEN_AT_ONCE = 500  # notes taken per statement
READ_AT_ONCE = 50  # documents read (and held in memory) at once
MAX_BATCHES_PER_PASS = 100  # the rest waits for the next pass, so that a pass ends
# One document's weight in the list is bounded: a client that logs one food a thousand
# times a day counts this many times for it, and a document keeps at most this many
# (food, day) rows (its largest), so made-up ids cannot fill the table.
MAX_LOGS_PER_FOOD_DAY = 20
MAX_ROWS_PER_DOCUMENT = 2000



def _today() -> date:
    return datetime.now(UTC).date()


def window(today: date) -> tuple[date, date]:
    """The first and last day counted, for ``today`` (UTC)."""
    return today - timedelta(days=WINDOW_DAYS), today + timedelta(days=_AHEAD_DAYS)


async def popular_food_ids(pool: asyncpg.Pool, limit: int, *,
                           today: date | None = None) -> list[tuple[UUID, int]]:
    """The ``limit`` foods logged most over the last 30 days, with how many times: most
    first, ties by food id. Only foods that are in the foods table; as fresh as the
    last pass."""
    first, last = window(today or _today())
    return await FoodCounts(pool).popular(first, last, limit)


def count_food_logs(food_logs: Any, first: date, last: date) -> list[DayCount]:
    """One document's ``food_logs`` counted per (food, day) from ``first`` to ``last``;
    an entry without a UUID food id or a readable day is not counted."""
    if not isinstance(food_logs, Mapping):
        return []
    counts: Counter[tuple[UUID, date]] = Counter()
    for entry in food_logs.values():
        if not isinstance(entry, Mapping):
            continue
        food_id, day = food_uuid(entry.get("food_id")), entry_day(entry)
        if food_id is not None and day is not None and first <= day <= last:
            counts[food_id, day] += 1
    return [DayCount(food_id, day, min(n, MAX_LOGS_PER_FOOD_DAY))
            for (food_id, day), n in counts.most_common(MAX_ROWS_PER_DOCUMENT)]


@dataclass
class PassReport:
    """What one pass did: the notes of an unfinished pass it restored, the documents it
    took and read, the rows it wrote."""

    restored: int = 0
    taken: int = 0
    read: list[int] = field(default_factory=list)
    rows: int = 0


class PopularAggregator:
    def __init__(self, documents: Documents, pool: asyncpg.Pool, redis: Redis, *,
                 today: Callable[[], date] = _today) -> None:
        self._documents = documents
        self._counts = FoodCounts(pool)
        self._redis = redis
        self._today = today

    async def run_once(self) -> PassReport | None:
        """One pass over the documents noted since the last; None when another
        instance is running one."""
        async with self._counts.exclusive() as counts:
            if counts is None:
                return None
            first, last = window(self._today())
            report = PassReport(restored=await counts.restore())
            pruned = await counts.prune(first)
            try:
                for _ in range(MAX_BATCHES_PER_PASS):
                    taken = await counts.take_changed(TAKEN_AT_ONCE)
                    report.taken += len(taken)
                    for start in range(0, len(taken), READ_AT_ONCE):
                        await self._recount(counts, taken[start:start + READ_AT_ONCE], first,
                                            last, report)
                    if len(taken) < TAKEN_AT_ONCE:
                        break
            finally:
                if pruned or report.read:  # the cached lists are out of date
                    await bump_popular_version(self._redis)
            return report

    async def _recount(self, counts: CountsPass, chunk: list[ChangedDocument],
                       first: date, last: date, report: PassReport) -> None:
        contents = await self._documents.stored_json([(d.user_id, d.name) for d in chunk],
                                                     ("food_logs",))
        # A document left out is gone (its rows went with it), was deleted and made
        # again under its name (the new one has a note of its own), or does not load.
        rows = {(d.user_id, d.doc_id): count_food_logs(contents[d.doc_id]["food_logs"], first,
                                                       last)
                for d in chunk if d.doc_id in contents}
        report.rows += await counts.replace(rows, chunk)
        report.read.extend(doc_id for _, doc_id in rows)


# -- the schedule -----------------------------------------------------------------------


async def scheduled_popular(app: web.Application) -> AsyncIterator[None]:
    """An aiohttp ``cleanup_ctx``: a pass every ``popular_interval_seconds`` while the
    server runs (none with 0). A failed pass's notes wait for the next."""
    aggregator = PopularAggregator(app[DOCUMENTS], app[POOL], app[REDIS])

    async def one_round() -> None:
        report = await aggregator.run_once()
        if report is None:
            log.debug("popular: another instance holds the lock; round skipped")
            return
        if report.restored:
            log.info("popular: %d documents taken by a pass that did not finish are noted"
                     " again", report.restored)
        if report.taken:
            log.debug("popular: %d documents recounted, %d rows", len(report.read),
                      report.rows)

    async with periodic("popular aggregator", app[SETTINGS].popular_interval_seconds,
                        one_round):
        yield
