"""Batched document loads: the loads asked for while a query runs go in the next one.

A burst of connections to documents not in memory (a server restart, a morning's
first syncs) would otherwise cost a pool connection and two round trips each. A load
asked for when no batch is under way starts one at once; loads asked for meanwhile
queue up, and when a batch ends the next takes everything queued, up to
``max_batch``. One batch runs at a time: that makes the batches largest (W3: 1,988
opens/s with two at a time, 2,161 with one), and one connection serves the loader
(see ``UpdateLog.dedicated``). A batch holds the next one back only for its query,
since each waiting connection builds its room from the results afterwards.

Results are handed to a callback in the turn of the event loop that reads them, with
no task or future per load in between: the registry gives each waiting caller a
future of its own, so one that gives up cancels only its own wait. (That is two turns
from the answer to a waiting socket instead of five; W3 did not move measurably, as
its wait is the batch already in flight: docs/performance.md.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from storage.doc_events import DocKey

if TYPE_CHECKING:
    from storage.update_log import StoredDocument, UpdateLog

log = logging.getLogger(__name__)

# Called once per load: the stored document, None (no row), or why the batch failed.
LoadDone = Callable[[DocKey, "StoredDocument | None | Exception"], None]


class DocumentLoader:
    def __init__(self, update_log: UpdateLog, done: LoadDone, *, max_batch: int = 128) -> None:
        self._log = update_log
        self._done = done
        self._max_batch = max_batch
        self._queue: deque[DocKey] = deque()
        self._running: asyncio.Task[None] | None = None

    def load(self, key: DocKey) -> None:
        """Load the document ``key`` in the next batch; ``done`` gets the result."""
        self._queue.append(key)
        if self._running is None:
            self._start_batch()  # nothing under way: go now, others gather meanwhile

    def _start_batch(self) -> None:
        if not self._queue:
            self._running = None
            return
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
        self._running = asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[DocKey]) -> None:
        results: list[StoredDocument | None] | list[Exception]
        try:
            results = await self._log.load_many(batch)
        except Exception as exc:
            results = [exc] * len(batch)
        try:
            for key, result in zip(batch, results, strict=True):
                try:
                    self._done(key, result)
                except Exception:  # one caller's bug must not strand the others
                    log.exception("handing over the load of %s/%s failed", *key)
        finally:
            self._start_batch()
