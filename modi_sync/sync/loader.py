"""Batched document loads: the loads asked for while a query runs go in the next one.

A burst of connections to documents not in memory (a server restart, a morning's
first syncs) would otherwise cost a pool connection and two round trips each. A load
asked for when no batch is under way starts one at once; loads asked for meanwhile
queue up, and when a batch ends the next takes everything queued, up to
``max_batch``. One batch runs at a time: that makes the batches largest (W3 opened
faster with one at a time than with two: docs/performance.md, "Figures behind the
code"), and one connection serves the loader (see ``UpdateLog.dedicated``). A batch
holds the next one back only for its query, since each waiting connection builds its
room from the results afterwards.

Results are handed to a callback in the turn of the event loop that reads them, with
no task or future per load in between: the registry gives each waiting caller a
future of its own, so one that gives up cancels only its own wait, and the answer
reaches a waiting socket in two turns of the loop, not five.

Handing over a batch is cheap for new loads (a room is made, its Doc built later), but
a catch-up re-applies each room's whole stored state (``registry.catch_up``): a batch of
large rooms could hold the event loop for seconds. So the handover lets the loop run
whenever it has taken ``HANDOVER_SLICE`` seconds; the next batch still waits for it.

A load may also ask for the names of its user's documents (``names.py``) and the
user's stored totals (``quota.py``): they are read in the same batch, by two more
statements, and handed to ``listed`` after the loads. A failure to read them costs
only the lists and totals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from uuid import UUID

from storage.doc_events import DocKey

from .names import MAX_LISTED_NAMES

if TYPE_CHECKING:
    from storage.update_log import StoredDocument, StoredTotals, UpdateLog

log = logging.getLogger(__name__)

HANDOVER_SLICE = 0.005  # seconds of callbacks before the event loop gets a turn

# Called once per load: the stored document, None (no row), or why the batch failed.
LoadDone = Callable[[DocKey, "StoredDocument | None | Exception"], None]
# Called once per user whose names were asked for: the names, or None (failed, too
# many), and the user's stored totals, or None (failed).
Listed = Callable[[UUID, "list[str] | None", "StoredTotals | None"], None]


class LoaderStopped(Exception):
    """A load asked for after the loader stopped."""


def _ignore(user_id: UUID, names: list[str] | None, totals: StoredTotals | None) -> None:
    pass


class DocumentLoader:
    def __init__(
        self,
        update_log: UpdateLog,
        done: LoadDone,
        listed: Listed | None = None,  # required for loads ``with_names``
        *,
        max_batch: int = 128,
    ) -> None:
        self._update_log = update_log
        self._done = done
        self._listed = listed or _ignore
        self._max_batch = max_batch
        self._queue: deque[DocKey] = deque()
        self._users: list[UUID] = []  # whose names to read with the next batch
        self._running: asyncio.Task[None] | None = None
        self._stopped = False

    def load(self, key: DocKey, *, with_names: bool = False) -> None:
        """Load the document ``key`` in the next batch; ``done`` gets the result. With
        ``with_names``, the names of its user's documents too (for ``listed``)."""
        self._queue.append(key)
        if with_names:
            self._users.append(key[0])
        if self._running is None:
            self._start_batch()  # nothing under way: go now, others gather meanwhile

    async def stop(self) -> None:
        """Start no batch more, and wait for the one under way: it runs on the loader's
        connection, which is given back after this. A load asked for later fails."""
        self._stopped = True
        while self._running is not None:
            await asyncio.wait([self._running])

    def _start_batch(self) -> None:
        if self._stopped:
            self._running = None
            while self._queue:
                self._done(self._queue.popleft(), LoaderStopped("the server is stopping"))
            return
        if not self._queue:
            self._running = None
            return
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
        users, self._users = self._users, []
        self._running = asyncio.ensure_future(self._run(batch, users))

    async def _run(self, batch: list[DocKey], users: list[UUID]) -> None:
        results: list[StoredDocument | None] | list[Exception]
        names: dict[UUID, list[str] | None] = {}
        totals: dict[UUID, StoredTotals] = {}
        try:
            results = await self._update_log.load_many(batch)
            if users:
                names, totals = await self._names(users)
        except Exception as exc:
            results = [exc] * len(batch)
        try:
            # The clock itself: uvloop's loop.time() stands still within a turn.
            slice_ends = time.monotonic() + HANDOVER_SLICE
            for key, result in zip(batch, results, strict=True):
                if time.monotonic() > slice_ends:
                    await asyncio.sleep(0)
                    slice_ends = time.monotonic() + HANDOVER_SLICE
                try:
                    self._done(key, result)
                except Exception:  # one caller's bug must not strand the others
                    log.exception("handing over the load of %s/%s failed", *key)
            for user_id in users:  # after the loads: a list is kept while its user has a room
                self._listed(user_id, names.get(user_id), totals.get(user_id))
        finally:
            self._start_batch()

    async def _names(
        self, users: list[UUID]
    ) -> tuple[dict[UUID, list[str] | None], dict[UUID, StoredTotals]]:
        try:
            return (await self._update_log.names_many(users, MAX_LISTED_NAMES),
                    await self._update_log.totals_many(users))
        except Exception as exc:  # the loads still stand; these users go without a list
            log.warning("reading the document names of %d users failed: %s", len(users), exc)
            return {}, {}
