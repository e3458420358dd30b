"""The rooms in memory: loaded once per document, released once idle.

A connection joins only a fully loaded room, so no client ever sees an empty
document while it loads. A room whose last connection left stays for
``idle_seconds`` (a reconnect finds it warm), then leaves memory once its queued
updates are stored. A failed load or a failed write pins nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import TYPE_CHECKING
from uuid import UUID

from .connection import CLOSE_SESSION_ENDED
from .room import Room, RoomKey
from .writer import WriteFailed

if TYPE_CHECKING:
    from storage.update_log import UpdateLog

    from .connection import Connection
    from .writer import GroupCommitWriter

log = logging.getLogger(__name__)


class TooManyConnections(Exception):
    """The user already has the configured number of open sync connections."""


class RoomRegistry:
    def __init__(
        self,
        update_log: UpdateLog,
        writer: GroupCommitWriter,
        *,
        idle_seconds: float,
        max_document_bytes: int,
        max_connections_per_user: int,
    ) -> None:
        self._log = update_log
        self._writer = writer
        self._idle_seconds = idle_seconds
        self._max_document_bytes = max_document_bytes
        self._max_connections_per_user = max_connections_per_user
        self.rooms: dict[RoomKey, Room] = {}
        self._loading: dict[RoomKey, asyncio.Future[Room]] = {}
        self._idle: dict[RoomKey, asyncio.TimerHandle] = {}
        self._evicting: set[asyncio.Task[None]] = set()
        self._per_user: Counter[UUID] = Counter()

    def connections_of(self, user_id: UUID) -> int:
        return self._per_user[user_id]

    async def get(self, key: RoomKey) -> Room:
        """The loaded room for ``key``; concurrent callers share one load."""
        room = self.rooms.get(key)
        if room is not None:
            return room
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load(self, key: RoomKey) -> Room:
        user_id, name = key
        stored = await self._log.load(user_id, name)
        room = Room(
            key, stored.doc_id, stored.updates, self._writer,
            max_bytes=self._max_document_bytes, on_broken=self._discard,
        )
        self.rooms[key] = room
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
        handle = self._idle.pop(key, None)
        if handle is not None:
            handle.cancel()
        room.add(conn)
        return room

    def leave(self, room: Room, conn: Connection) -> None:
        room.remove(conn)
        self._release_slot(conn.user_id)
        if not room.connections and self.rooms.get(room.key) is room:
            self._schedule_idle(room)

    def _release_slot(self, user_id: UUID) -> None:
        self._per_user[user_id] -= 1
        if self._per_user[user_id] <= 0:
            del self._per_user[user_id]

    def _schedule_idle(self, room: Room) -> None:
        loop = asyncio.get_running_loop()
        old = self._idle.pop(room.key, None)
        if old is not None:
            old.cancel()
        self._idle[room.key] = loop.call_later(self._idle_seconds, self._start_eviction, room)

    def _start_eviction(self, room: Room) -> None:
        self._idle.pop(room.key, None)
        task = asyncio.create_task(self._evict(room))
        self._evicting.add(task)
        task.add_done_callback(self._evicting.discard)

    async def _evict(self, room: Room) -> None:
        # Leave only once everything applied in memory is stored: a fresh load
        # from storage must find all of it.
        with contextlib.suppress(WriteFailed):  # write_failed() already discarded the room
            await self._writer.wait_committed(room.last_ticket)
        if not room.connections and self.rooms.get(room.key) is room:
            del self.rooms[room.key]
            log.debug("room %s/%s left memory", *room.key)

    def _discard(self, room: Room) -> None:
        if self.rooms.get(room.key) is room:
            del self.rooms[room.key]
        handle = self._idle.pop(room.key, None)
        if handle is not None:
            handle.cancel()

    def close_user(self, user_id: UUID, code: int = CLOSE_SESSION_ENDED) -> int:
        """Close every sync connection of ``user_id`` on this instance; return how many."""
        closed = 0
        for room in self.rooms.values():
            if room.key[0] != user_id:
                continue
            for conn in room.connections:
                conn.close(code, "session ended")
                closed += 1
        return closed

    async def close(self) -> None:
        """Shutdown: close every connection (1001, going away) and forget every room."""
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        for room in list(self.rooms.values()):
            for conn in list(room.connections):
                conn.close(1001, "server shutting down")
        if self._evicting:
            await asyncio.gather(*self._evicting, return_exceptions=True)
