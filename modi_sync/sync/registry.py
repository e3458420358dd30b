"""The rooms in memory: loaded once per document, released once idle.

A connection joins only a fully loaded room, so no client ever sees an empty
document while it loads. A room whose last connection left stays for
``idle_seconds`` (a reconnect finds it warm), then leaves memory once its queued
updates are stored. A failed load or a failed write pins nothing.

A user's first load also reads the names of their documents (``names.py``); while
they have rooms in memory, opening a name not among them makes its empty room at once.

The registry also starts automatic compaction when a room's stored history passes
the configured count or size; it runs in the background and the room keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from uuid import UUID

from storage.doc_events import AWARENESS, AWARENESS_QUERY, DELETED, UPDATE, DocEvent, DocKey

from ..contract import CloseCode
from ..logs import doc_field
from ..metrics import CATCH_UPS
from .loader import DocumentLoader
from .memory import MemoryReturn
from .names import DocumentNames
from .quota import Usage
from .room import Room, RoomKey, RoomLimits
from .writer import WriteFailed

if TYPE_CHECKING:
    from storage.update_log import Compaction, StoredDocument, StoredTotals, UpdateLog

    from .connection import Connection
    from .writer import GroupCommitWriter

log = logging.getLogger(__name__)


class TooManyConnections(Exception):
    """The user already has the configured number of open sync connections."""


class DocumentNotFound(Exception):
    """No such document, and the caller did not ask to create it."""


@dataclass(frozen=True, slots=True)
class Quota:
    max_documents: int  # per user
    max_bytes: int  # stored, per user


@dataclass(frozen=True, slots=True)
class AutoCompaction:
    compact: Callable[[UUID, int], Awaitable[Compaction]]  # (owner, document id)
    max_updates: int
    max_bytes: int
    min_interval: float = 60.0  # seconds between two compactions of one document


AWARENESS_SWEEP_SECONDS = 1.0  # how often silent awareness states are looked for


class AwarenessBus(Protocol):
    def publish_awareness(self, key: DocKey, update: bytes) -> None: ...

    def query_awareness(self, key: DocKey) -> None: ...


class RoomRegistry:
    def __init__(
        self,
        update_log: UpdateLog,
        writer: GroupCommitWriter,
        *,
        idle_seconds: float,
        limits: RoomLimits,
        max_connections_per_user: int,
        quota: Quota | None = None,
        auto_compaction: AutoCompaction | None = None,
        instance: uuid.UUID | None = None,
        awareness_bus: AwarenessBus | None = None,
        awareness_timeout: float = 30.0,
        counters_log: UpdateLog | None = None,
    ) -> None:
        """``awareness_bus``: carries awareness to and from the other instances. A state
        not renewed within ``awareness_timeout`` seconds is removed (y-protocols' clients
        renew theirs every 15 s). ``counters_log``: where a catch-up reads the documents'
        counters, beside the loader (``update_log`` may be one connection of its own,
        which runs one statement at a time); ``update_log`` if None."""
        self.instance = instance or uuid.uuid4()  # tells our bus messages from others'
        self._loader = DocumentLoader(update_log, self._loaded, self._listed)
        self._counters_log = counters_log or update_log
        # Rooms a catch-up reads again, until their load answers; when it started.
        self._reloading: set[RoomKey] = set()
        self._catch_up_started = 0.0
        self._writer = writer
        self._idle_seconds = idle_seconds
        self._limits = limits
        self._quota = quota
        self._max_connections_per_user = max_connections_per_user
        self._auto = auto_compaction
        self.rooms: dict[RoomKey, Room] = {}
        # Loads under way: who waits for each, and whether they would create it.
        self._loading: dict[RoomKey, list[tuple[asyncio.Future[Room], bool]]] = {}
        self._idle: dict[RoomKey, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._compacting: set[RoomKey] = set()
        self._per_user: Counter[UUID] = Counter()
        self._names = DocumentNames()  # of the users with rooms here
        self._usage: dict[UUID, Usage] = {}  # of the users with rooms here, once read
        self._rooms_of: Counter[UUID] = Counter()
        self._bus = awareness_bus
        self._awareness_timeout = awareness_timeout
        self._aware: set[RoomKey] = set()  # rooms holding awareness states
        self._sweep: asyncio.TimerHandle | None = None
        self.memory = MemoryReturn()

    def connections_of(self, user_id: UUID) -> int:
        return self._per_user[user_id]

    def connections(self) -> Iterator[Connection]:
        """Every sync connection on this instance."""
        for room in self.rooms.values():
            yield from room.connections

    # -- rooms ------------------------------------------------------------------------

    async def get(self, key: RoomKey, *, create: bool = True) -> Room:
        """The loaded room for ``key``; concurrent callers share one load.

        A document exists once something was stored in it. Without ``create``, one that
        does not raises DocumentNotFound; with it, its room starts empty.
        """
        room = self.rooms.get(key)
        if room is not None:
            if not create and not room.exists:
                raise DocumentNotFound(key[1])
            return room
        if key not in self._loading and self._names.is_new(key):
            if not create:
                raise DocumentNotFound(key[1])
            return self._make_room(key, None)  # nothing stored: no load to wait for
        # A future of its own per caller: one that gives up (its socket closed) cancels
        # only its own wait, never the load the others wait for.
        future: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        waiting = self._loading.get(key)
        if waiting is None:
            self._loading[key] = [(future, create)]
            self._loader.load(key, with_names=self._names.want(key[0]))
        else:
            waiting.append((future, create))
        return await future

    def _loaded(self, key: RoomKey, stored: StoredDocument | None | Exception) -> None:
        """The loader's answer for ``key``: make the room and hand it to every caller,
        or, for a room already in memory, bring it up to date (``catch_up``)."""
        if key in self._reloading:
            self._reloaded(key)
        waiting = self._loading.pop(key, None)
        if waiting is None:
            self._caught_up(key, stored)
            return
        if isinstance(stored, Exception):
            for future, _ in waiting:
                if not future.done():
                    future.set_exception(stored)
            return
        room = None
        if stored is not None or any(create for _, create in waiting):
            room = self._make_room(key, stored)
        for future, create in waiting:
            if future.done():  # the caller gave up
                continue
            if room is None or (not create and not room.exists):
                future.set_exception(DocumentNotFound(key[1]))
            else:
                future.set_result(room)

    def _listed(self, user_id: UUID, names: list[str] | None,
                stored: StoredTotals | None) -> None:
        if not self._rooms_of[user_id]:  # the load failed, or the user's rooms left meanwhile
            self._names.forget(user_id)
            return
        self._names.listed(user_id, names)
        if stored is not None and self._quota is not None:
            self._usage[user_id] = Usage(stored.documents, stored.bytes,
                                         self._quota.max_documents, self._quota.max_bytes)

    def _make_room(self, key: RoomKey, stored: StoredDocument | None) -> Room:
        doc_id, updates, last_seq = (
            (stored.doc_id, stored.updates, stored.last_seq) if stored else (None, [], 0))
        room = Room(
            key, doc_id, updates, self._writer, last_seq=last_seq,
            limits=self._limits, usage_of=self._usage.get,
            on_broken=self._discard, on_grown=self._maybe_compact,
            share_awareness=self._bus.publish_awareness if self._bus else None,
            on_awareness=self._holds_awareness,
        )
        if self._bus is not None:
            self._bus.query_awareness(key)  # the other instances' clients, at once
        self.rooms[key] = room
        self._rooms_of[key[0]] += 1
        self._schedule_idle(room)  # until someone joins
        return room

    async def join(self, key: RoomKey, conn: Connection) -> Room:
        """Add ``conn`` to the room of ``key``, loading it if needed."""
        if self._per_user[conn.user_id] >= self._max_connections_per_user:
            raise TooManyConnections()
        self._per_user[conn.user_id] += 1
        try:
            room = await self.get(key)
        except BaseException:
            self._release_slot(conn.user_id)
            raise
        self._cancel_idle(key)
        room.add(conn)
        return room

    def leave(self, room: Room, conn: Connection) -> None:
        room.remove(conn)
        self._release_slot(conn.user_id)
        if not room.connections and self.rooms.get(room.key) is room:
            self._schedule_idle(room)

    def touch(self, room: Room) -> None:
        """An HTTP request used the room: keep it for another idle period."""
        if not room.connections and self.rooms.get(room.key) is room:
            self._schedule_idle(room)

    def release(self, room: Room) -> None:
        """A one-off reader (the export) is done with a room it loaded: it leaves memory
        now, not after the idle period, unless a socket joined it meanwhile."""
        if not room.connections and self.rooms.get(room.key) is room:
            self._cancel_idle(room.key)
            self._start_eviction(room)

    def _release_slot(self, user_id: UUID) -> None:
        self._per_user[user_id] -= 1
        if self._per_user[user_id] <= 0:
            del self._per_user[user_id]

    # -- leaving memory -----------------------------------------------------------------

    def _schedule_idle(self, room: Room) -> None:
        self._cancel_idle(room.key)
        loop = asyncio.get_running_loop()
        self._idle[room.key] = loop.call_later(self._idle_seconds, self._start_eviction, room)

    def _cancel_idle(self, key: RoomKey) -> None:
        handle = self._idle.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _start_eviction(self, room: Room) -> None:
        self._idle.pop(room.key, None)
        self._spawn(self._evict(room))

    async def _evict(self, room: Room) -> None:
        # Leave only once everything applied in memory is stored: a fresh load
        # from storage must find all of it.
        with contextlib.suppress(WriteFailed):  # write_failed() already discarded the room
            await self._writer.wait_committed(room.last_ticket)
        if not room.connections and self.rooms.get(room.key) is room:
            self._discard(room)
            self.memory.freed()
            log.debug("room %s/%s left memory", *room.key, extra=doc_field(room.key))
            self._compact_if_due(room, leaving=True)  # the next load reads one row

    def _discard(self, room: Room) -> None:
        key = room.key
        if self.rooms.get(key) is room:
            del self.rooms[key]
            self._compacting.discard(key)
            self._names.add(key)  # it may have been written: the next open loads it
            self._rooms_of[key[0]] -= 1
            if not self._rooms_of[key[0]]:
                del self._rooms_of[key[0]]
                self._names.forget(key[0])
                self._usage.pop(key[0], None)
        self._cancel_idle(key)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- changes from elsewhere -------------------------------------------------------

    def drop_document(self, key: RoomKey) -> None:
        """The document was erased: close its sockets (4404) and forget its room."""
        room = self.rooms.get(key)
        usage = self._usage.get(key[0])
        if usage is not None:  # without its room here, its bytes are unknown: kept
            usage.removed(room.stored_bytes if room else 0, document=True)
        if room is not None:
            room.close_all(CloseCode.DOCUMENT_DELETED, "document deleted")
            self._discard(room)

    def handle_doc_events(self, events: list[DocEvent]) -> None:
        """From the Redis bus: what other instances and commands did to documents."""
        for event in events:
            if event.kind == UPDATE:
                self._names.add(event.key)  # made elsewhere, perhaps
                usage = self._usage.get(event.key[0])
                if usage is not None:
                    usage.stored(len(event.update))
            room = self.rooms.get(event.key)
            if room is None:
                continue  # not in memory here: the next load reads it from storage
            if event.kind == UPDATE:
                room.apply_stored(event.update, event.seq)
            elif event.kind == DELETED:
                self.drop_document(event.key)
            elif event.kind == AWARENESS:
                room.apply_remote_awareness(event.update)
            elif event.kind == AWARENESS_QUERY and self._bus is not None:
                update = room.local_awareness()
                if update is not None:
                    self._bus.publish_awareness(event.key, update)

    def _holds_awareness(self, room: Room) -> None:
        self._aware.add(room.key)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(
                AWARENESS_SWEEP_SECONDS, self._sweep_awareness)

    def _sweep_awareness(self) -> None:
        """Expire the awareness states that went silent, in the rooms holding any."""
        self._sweep = None
        for key in list(self._aware):
            room = self.rooms.get(key)
            if room is None or not room.expire_awareness(self._awareness_timeout):
                self._aware.discard(key)
        if self._aware:
            self._sweep = asyncio.get_running_loop().call_later(
                AWARENESS_SWEEP_SECONDS, self._sweep_awareness)

    def catch_up(self) -> None:
        """Messages of the bus may have been missed: read again the rooms that missed some.

        A room knows the last seq of its document it applied (from its load, its own
        commits and the bus), and the documents' counters say how far their stored
        updates go: they are read in one statement for every room in memory, and only
        the rooms behind their counter are read again. A room that missed nothing is
        left alone. The loads under way are read again whatever their counter, since
        their read may predate a missed update.

        The reloads queue behind the loads under way, so a room being made gets its
        reload after it is made. The loader's answer for a key nobody waits for is a
        reload (``_caught_up``); one that finds the room gone and a new load waiting
        makes the room, from data as new as the load's.
        """
        CATCH_UPS.inc()
        self._names.forget_all()  # a document may have been made unheard
        self._catch_up_started = time.monotonic()
        for key in list(self._loading):
            self._reload(key)
        self._spawn(self._reload_behind(list(self.rooms)))

    def _reload(self, key: RoomKey) -> None:
        self._reloading.add(key)
        self._loader.load(key)

    async def _reload_behind(self, keys: list[RoomKey]) -> None:
        """Read again the rooms of ``keys`` still in memory that are behind their
        document's counter; all of them if the counters cannot be read."""
        counters: list[int | None] | None = None
        if keys:
            try:
                counters = await self._counters_log.counters_many(keys)
            except Exception as exc:
                log.warning("reading the documents' counters failed (%s); reading every "
                            "room again", exc)
        behind = []
        for i, key in enumerate(keys):
            room = self.rooms.get(key)
            if room is None:
                continue  # gone from memory: its next load reads it from storage
            counter = None if counters is None else counters[i]
            if counters is None or (counter is not None and counter > room.applied_seq):
                behind.append(key)  # (no counter: nothing stored, nothing to miss)
        log.info("catching up after a gap on the bus: %d of %d rooms in memory are behind "
                 "their documents, reading them again", len(behind), len(keys))
        for key in behind:
            self._reload(key)
        if not self._reloading:
            self._reloaded(None)

    def _reloaded(self, key: RoomKey | None) -> None:
        if key is not None:
            self._reloading.discard(key)
        if not self._reloading:
            log.info("caught up after a gap on the bus in %.3f s",
                     time.monotonic() - self._catch_up_started)

    def _caught_up(self, key: RoomKey, stored: StoredDocument | None | Exception) -> None:
        room = self.rooms.get(key)
        if room is None or stored is None:
            return  # gone from memory, or nothing stored: nothing to miss
        if isinstance(stored, Exception):
            # Cannot tell what it lacks: its clients reconnect to a fresh load.
            log.warning("reading %s/%s again failed (%s); closing its room", *key, stored,
                        extra=doc_field(key))
            room.write_failed()
            return
        room.catch_up(stored)

    def close_user(self, user_id: UUID, code: int = CloseCode.SESSION_ENDED,
                   reason: str = "session ended") -> int:
        """Close every sync connection of ``user_id`` on this instance; return how many."""
        closed = 0
        for room in self.rooms.values():
            if room.key[0] == user_id:
                closed += len(room.connections)
                room.close_all(code, reason)
        return closed

    # -- automatic compaction -----------------------------------------------------------

    def _maybe_compact(self, room: Room) -> None:
        loop = asyncio.get_running_loop()
        if self._auto is not None and loop.time() - room.compacted_at < self._auto.min_interval:
            return  # a hot document is merged at most once a minute; the rest when it leaves
        self._compact_if_due(room)

    def _compact_if_due(self, room: Room, *, leaving: bool = False) -> None:
        """Compact a room over the configured line, or one leaving memory that this
        instance wrote to and that has more than one row: the next load reads one row,
        which a fresh client gets as it is, with no Doc built. (A batch is one row, so
        a burst of edits may leave a few hundred rows, under the line.)"""
        auto = self._auto
        if auto is None or room.doc_id is None or room.key in self._compacting:
            return
        written = leaving and room.last_ticket > 0 and room.stored_updates > 1
        if (not written and room.stored_updates < auto.max_updates
                and room.stored_bytes < auto.max_bytes):
            return
        self._compacting.add(room.key)
        self._spawn(self._compact(room, auto))

    async def _compact(self, room: Room, auto: AutoCompaction) -> None:
        assert room.doc_id is not None
        try:
            result = await auto.compact(room.key[0], room.doc_id)
        except Exception:
            # Not retried while the room stays in memory: a failure here repeats.
            log.exception("automatic compaction of %s/%s failed", *room.key,
                          extra=doc_field(room.key))
            return
        room.compacted(result.updates_before - result.updates_after,
                       result.bytes_before - result.bytes_after)
        self.memory.freed()  # the rows read and merged: megabytes, for a large document
        usage = self._usage.get(room.key[0])
        if usage is not None:
            usage.removed(result.bytes_before - result.bytes_after)
        room.compacted_at = asyncio.get_running_loop().time()
        self._compacting.discard(room.key)
        log.info("compacted %s/%s: %d updates, %d bytes -> %d, %d", *room.key,
                 result.updates_before, result.bytes_before,
                 result.updates_after, result.bytes_after, extra=doc_field(room.key))
        if self.rooms.get(room.key) is room and auto.min_interval <= 0:
            self._maybe_compact(room)  # what arrived meanwhile may be over the line again

    # -- shutdown -----------------------------------------------------------------------

    async def stop_loading(self) -> None:
        """Wait for the document load under way, and start none more (engine.stop)."""
        await self._loader.stop()

    async def close(self, compaction_budget: float = 5.0) -> None:
        """Shutdown: close every connection (1001, going away) and forget every room.

        Rooms leave memory here too, so their due compactions start, for at most
        ``compaction_budget`` seconds; one cut short is rolled back and done next time.
        """
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
        self.memory.stop()
        for room in list(self.rooms.values()):
            room.close_all(CloseCode.GOING_AWAY, "server shutting down")
            self._compact_if_due(room, leaving=True)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=compaction_budget)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
