"""The sync machinery of one process: the group-commit writer, the room registry, and
the bus to the other instances.

`serve` runs one for its websockets and HTTP routes; a command that changes a document
(restore) runs one too, so that its update is stored, fanned out and published exactly
like a client's (documents.py). Start and stop are symmetrical: ``stop`` stores every
update received before it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import partial

from pycrdt import Doc
from redis.asyncio import Redis

from storage.connection_leases import ConnectionLeases
from storage.doc_events import DocChannel, DocMessage, doc_events, subscribe_doc_events
from storage.session_events import SessionEvent, session_events, subscribe_session_events
from storage.update_log import Compaction, UpdateLog

from ..config import Settings
from ..history import compact_document
from .bus import Gaps, UpdatePublisher
from .keepalive import KeepAlive
from .listener import RedisListener
from .registry import AutoCompaction, Quota, RoomRegistry
from .room import RoomLimits
from .writer import GroupCommitWriter

log = logging.getLogger(__name__)


class SyncEngine:
    def __init__(
        self,
        settings: Settings,
        update_log: UpdateLog,
        redis: Redis,
        *,
        sessions_ended: Callable[[SessionEvent], None] | None = None,
        keepalive: bool = False,
    ) -> None:
        """``sessions_ended``: called when another instance ended a user's sessions, or
        the user withdrew consent (the server closes their sockets). ``keepalive``:
        sweep the connections for peers that went away (the server's websockets)."""
        self.instance = uuid.uuid4()  # tells this process's bus messages from the others'
        self._redis = redis
        self.publisher = UpdatePublisher(DocChannel(redis, self.instance), self.instance,
                                         recheck=settings.bus_recheck_seconds)
        # The writer and the loader each run one statement at a time, on a connection of
        # their own: no pool acquire and release per batch.
        self._dedicated = [update_log.dedicated(), update_log.dedicated()]
        self.writer = GroupCommitWriter(self._dedicated[0], max_batch=settings.commit_batch_max,
                                        publish=self.publisher.publish)
        self.registry = RoomRegistry(
            self._dedicated[1], self.writer,
            idle_seconds=settings.room_idle_seconds,
            limits=RoomLimits(
                max_bytes=settings.max_document_bytes,
                max_pending_bytes=settings.max_pending_bytes,
                max_awareness_clients=settings.max_awareness_clients,
                max_awareness_bytes=settings.max_awareness_bytes),
            max_connections_per_user=settings.max_connections_per_user,
            quota=Quota(settings.max_documents_per_user, settings.max_user_bytes),
            auto_compaction=AutoCompaction(
                partial(_compact, update_log, settings), settings.auto_compact_updates,
                settings.auto_compact_bytes, settings.auto_compact_interval),
            instance=self.instance,
            awareness_bus=self.publisher,
            awareness_timeout=settings.awareness_timeout_seconds,
            counters_log=update_log,
        )
        self._gaps = Gaps(self.instance)
        self._listeners = [
            RedisListener(redis, subscribe_doc_events,
                          partial(doc_events, ignore=self.instance), self._doc_message,
                          "doc-events", resubscribed=self._doc_events_back),
        ]
        if sessions_ended is not None:
            self._listeners.append(RedisListener(
                redis, subscribe_session_events, session_events, sessions_ended,
                "sessions-ended"))
        self.leases = ConnectionLeases(redis, self.instance,
                                       limit=settings.max_connections_per_user)
        self._keepalive = (KeepAlive(self.registry.connections, settings.keepalive_seconds)
                           if keepalive else None)

    async def start(self) -> None:
        # What the first client would otherwise wait for: statements planned, a Redis
        # connection open, and pycrdt's lazy imports (its first Doc loads an async backend).
        for update_log in self._dedicated:
            await update_log.warm_up()
        await self._redis.ping()
        Doc()
        await self.writer.start()
        for listener in self._listeners:
            await listener.start()
        await self.publisher.start()  # subscribed: say hello, and wait for the others' answers
        self.leases.start()
        if self._keepalive is not None:
            self._keepalive.start()

    async def close_rooms(self) -> None:
        """Close every connection (1001) and let the rooms leave memory."""
        await self.registry.close()

    async def stop(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
        await self.leases.stop()
        for listener in self._listeners:
            await listener.stop()
        await self.writer.stop()  # every update received before the stop is stored
        await self.publisher.stop()
        await self.registry.stop_loading()
        for update_log in self._dedicated:  # the pool waits for its connections when it closes
            await update_log.close()

    def _doc_message(self, message: DocMessage) -> None:
        """Another instance (or a command) published on the document channel."""
        self.publisher.heard(message)
        self.registry.handle_doc_events(message.events)
        if self._gaps.missed(message):
            self.registry.catch_up()

    def _doc_events_back(self) -> None:
        """The document channel's subscription was lost and is back."""
        self.publisher.subscribed_again()
        self._gaps.forget()
        self.registry.catch_up()


async def _compact(update_log: UpdateLog, settings: Settings, user_id: uuid.UUID,
                   doc_id: int) -> Compaction:
    return await compact_document(update_log, doc_id, snapshot_every=settings.snapshot_every,
                                  user_id=user_id)
