"""Group commit: every update that arrived meanwhile, from every room, in one statement.

Updates get increasing tickets as they are submitted. A single task takes everything
queued, merges each document's updates of the batch into one (its target does the
merging: one row per document per batch, whatever the batch holds), stores them with
one INSERT (one transaction, one WAL flush), and only then hands each document's
update back to its room for fan-out. A document stored for the first time gets its
row just before, in one statement for all such documents of the batch. Whoever
needs to know that something is durable (a sync reply, an HTTP write, an idle room
about to leave memory) waits for a ticket; nothing is allocated per update for those
who do not wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..logs import doc_field
from ..metrics import COMMIT_BATCH, COMMIT_FAILURES, COMMIT_SECONDS, UPDATES_STORED

if TYPE_CHECKING:
    from storage.doc_events import DocKey
    from storage.update_log import UpdateLog

log = logging.getLogger(__name__)


class WriteFailed(Exception):
    """The batch holding this update could not be stored."""


class CommitTarget(Protocol):
    key: DocKey
    doc_id: int | None  # None until the document has a row; the writer makes it

    def merge(self, updates: list[bytes]) -> bytes:
        """This target's updates of one batch (two or more, in order) as one."""

    def committed(self, update: bytes, origin: Any, seq: int) -> None:
        """This target's update of one stored batch; origin None if it has several."""

    def write_failed(self) -> None: ...


Queued = tuple[CommitTarget, bytes, Any]  # (target, update, origin)


def _row_id(target: CommitTarget) -> int:
    assert target.doc_id is not None  # _make_documents keeps only the targets with a row
    return target.doc_id


class GroupCommitWriter:
    def __init__(
        self,
        update_log: UpdateLog,
        *,
        max_batch: int = 2048,
        publish: Callable[[list[tuple[DocKey, bytes, int]]], None] | None = None,
    ) -> None:
        self._update_log = update_log
        self._publish = publish
        self._max_batch = max_batch
        self._queue: deque[Queued] = deque()
        self._submitted = 0  # ticket of the newest submitted update
        self._committed = 0  # every ticket up to here is stored (or failed)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Ticket ranges of recent failed batches, so a late waiter learns of the failure.
        self._failed: deque[tuple[int, int]] = deque(maxlen=64)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def committed(self) -> int:
        return self._committed

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit-writer")

    async def stop(self) -> None:
        """Store everything still queued, then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def submit(self, target: CommitTarget, update: bytes, origin: Any) -> int:
        """Queue an update for storage; return its ticket."""
        self._queue.append((target, update, origin))
        self._submitted += 1
        self._wakeup.set()
        return self._submitted

    async def wait_committed(self, ticket: int) -> None:
        """Return once ``ticket`` is stored; raise WriteFailed if its batch failed."""
        if ticket > self._committed:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append((ticket, future))
            await future
        elif any(first <= ticket <= last for first, last in self._failed):
            raise WriteFailed()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            await self._store(batch)

    async def _store(self, batch: list[Queued]) -> None:
        last_ticket = self._committed + len(batch)
        started = time.perf_counter()
        try:
            rows = await self._make_documents(self._merged(batch))
            seqs = await self._update_log.append_many(
                [_row_id(target) for target, _, _ in rows], [update for _, update, _ in rows],
                [target.key[0] for target, _, _ in rows],
            )
        except Exception:
            COMMIT_FAILURES.inc()
            log.exception("storing %d updates failed; their rooms are reset", len(batch))
            self._failed.append((self._committed + 1, last_ticket))
            self._committed = last_ticket
            for target in {id(t): t for t, _, _ in batch}.values():
                target.write_failed()
            self._wake_waiters(WriteFailed())
            return
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        COMMIT_BATCH.observe(len(batch))
        UPDATES_STORED.inc(len(batch))
        self._committed = last_ticket
        stored: list[tuple[DocKey, bytes, int]] = []
        for (target, update, origin), seq in zip(rows, seqs, strict=True):
            if seq is None:
                # Its document row is gone. An erased document's room is closing
                # already; any other such room (its row lost in a database crash) must
                # reload, and its clients resend what they have.
                target.write_failed()
                continue
            stored.append((target.key, update, seq))
            try:
                target.committed(update, origin, seq)
            except Exception:
                # Stored, but not sent: the room resets and its clients resync. This
                # task must go on, or every update after it would wait forever.
                log.exception("fan-out of stored updates of %s/%s failed; resetting the room",
                              *target.key, extra=doc_field(target.key))
                target.write_failed()
        self._wake_waiters(None)
        if self._publish is not None and stored:
            self._publish(stored)  # to the other instances; queued, never waited for

    @staticmethod
    def _merged(batch: list[Queued]) -> list[Queued]:
        """One (target, update, origin) per target, in the order of its first update.

        A busy document's updates of one batch become one row and one message to its
        peers: fewer rows for PostgreSQL to insert and index, fewer frames to send.
        """
        grouped: dict[int, tuple[CommitTarget, list[bytes], list[Any]]] = {}
        for target, update, origin in batch:
            entry = grouped.get(id(target))
            if entry is None:
                grouped[id(target)] = (target, [update], [origin])
            else:
                entry[1].append(update)
                if entry[2][0] is not origin:
                    entry[2][0] = None  # from several senders: every peer gets it
        return [
            (target, updates[0] if len(updates) == 1 else target.merge(updates), origin[0])
            for target, updates, origin in grouped.values()
        ]

    async def _make_documents(self, rows: list[Queued]) -> list[Queued]:
        """Give the documents stored for the first time their row, all in one statement;
        the rows that can be stored. A document whose user was deleted meanwhile gets
        no row: its room alone fails, not the batch (the other users' rooms)."""
        new = [t for t, _, _ in rows if t.doc_id is None]  # one entry per target
        if not new:
            return rows
        ids = await self._update_log.create_documents([t.key for t in new])
        for target, doc_id in zip(new, ids, strict=True):
            target.doc_id = doc_id
        if all(ids):
            return rows
        for target in new:
            if target.doc_id is None:
                log.info("not storing an update of %s/%s: its user is gone", *target.key,
                         extra=doc_field(target.key))
                target.write_failed()
        return [row for row in rows if row[0].doc_id is not None]

    def _wake_waiters(self, error: Exception | None) -> None:
        ready = [w for w in self._waiters if w[0] <= self._committed]
        if not ready:
            return
        self._waiters = [w for w in self._waiters if w[0] > self._committed]
        for _, future in ready:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
