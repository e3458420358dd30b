"""The documents service: the one server-side way into a user's documents.

In the spirit of Hocuspocus's ``openDirectConnection``: the REST routes, the history
commands and whatever comes later (export, summaries, the OCR worker) read and write a
document only through here, and here only through its room. An update applied here is
validated, stored by the group-commit writer, fanned out and published to the other
instances exactly like one from a websocket, so it is stored before anyone sees it and
reaches every instance. Every answer waits until what it shows is stored.

Errors are the domain's (modi_sync/errors.py): the caller maps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from pycrdt import Doc, Map
from redis.asyncio import Redis

from storage.doc_events import DocKey, publish_deleted
from storage.update_log import Compaction, DocumentInfo, Snapshot, StoredDocument, UpdateLog

from .contract import DOCUMENT_ROOTS
from .errors import Invalid, NotFound, TooLarge, Unavailable
from .history import compact_document, restore_update
from .runtime import Storage
from .sync.engine import SyncEngine
from .sync.quota import QuotaExceeded
from .sync.registry import DocumentNotFound
from .sync.room import (
    EMPTY_STATE,
    DocumentTooLarge,
    DocumentUnavailable,
    InvalidUpdate,
    Room,
    UpdatesDoNotIntegrate,
)
from .sync.writer import WriteFailed

_LISTED_AT_ONCE = 500  # documents read per query by ``each``
_ENTRIES_AT_ONCE = 250  # a root's entries read between two turns of the loop: ~2 ms

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DocumentCopy:
    """A document's schema roots as JSON and its whole Yjs v1 update, of one state."""

    content: dict[str, Any]
    update: bytes


@contextlib.asynccontextmanager
async def open_documents(storage: Storage) -> AsyncIterator[Documents]:
    """The documents service outside ``serve`` (a command, the OCR worker), on a sync
    engine of the process's own: what it applies is stored and published to the running
    servers like any client's update."""
    engine = SyncEngine(storage.settings, storage.update_log, storage.redis)
    await engine.start()
    try:
        yield Documents(storage.update_log, engine, storage.redis)
    finally:
        await engine.stop()


class Documents:
    def __init__(self, update_log: UpdateLog, engine: SyncEngine, redis: Redis) -> None:
        self._update_log = update_log
        self._engine = engine
        self._registry = engine.registry
        self._redis = redis

    # -- one document ---------------------------------------------------------------------

    async def json(self, user_id: UUID, name: str) -> dict[str, Any]:
        """The document schema's roots as JSON; other roots are left out. Read a slice
        of entries at a time, as ``entries`` reads them, so that a large document does
        not hold the event loop (docs/performance.md, "Figures behind the code"): each
        entry is read whole, as it is when its slice is."""
        room = await self._room(user_id, name)
        content: dict[str, Any] = {}
        for root in DOCUMENT_ROOTS:
            part: dict[str, Any] = {}
            async for items in _slices(room, root):
                part.update(items)
            content[root] = part
        await self._stored(room.last_ticket)  # whatever was read, stored before it is shown
        return content

    async def entries(self, user_id: UUID, name: str, root: str,
                      ) -> AsyncIterator[list[Any]]:
        """The values of one map root, as JSON, ``_ENTRIES_AT_ONCE`` at a time, for a
        reader of a large root (the daily summary reads a food log of thousands of
        entries): the loop serves others between two slices. An entry is read as it is
        when its slice is; one deleted meanwhile is left out."""
        room = await self._room(user_id, name)
        async for items in _slices(room, root):
            yield [value for _, value in items]
        await self._stored(room.last_ticket)  # the reader's loop ends once all is stored

    async def stored_json(self, keys: Sequence[DocKey], roots: Sequence[str] = DOCUMENT_ROOTS,
                          ) -> dict[int, dict[str, Any]]:
        """Many documents' ``roots`` as JSON, as stored now, by document id; a document
        with no row, or whose stored updates do not load, is left out.

        For a reader that must see every write any instance has stored: the popular
        list's aggregator, which reads a document after taking its change note. A room
        here may lag another instance's write by a bus message, so no room is used:
        one query for all of them, Docs built in a thread and dropped after. pycrdt
        keeps the GIL while it applies updates, so the thread spares the loop only the
        Python around it: a large document still holds the loop while it loads.
        """
        stored = await self._update_log.load_many(keys)
        return await asyncio.to_thread(_stored_content, stored, roots)

    async def copy(self, user_id: UUID, name: str) -> DocumentCopy:
        """The document as JSON and as its whole update, both of the same state. A room
        this call had to load leaves memory right after, unless a socket joined it."""
        copy, loaded = await self._copy(user_id, name)
        if loaded is not None:
            self._registry.release(loaded)
        return copy

    async def copies(
            self, user_id: UUID) -> AsyncGenerator[tuple[DocumentInfo, DocumentCopy], None]:
        """Every document of the user, by name, as ``copy`` reads it (one deleted
        meanwhile is left out), however many: the export. A room loaded for it leaves
        memory once the next one is loaded, so two at most are held, never the
        account's all. Not at once: while a user has no room in memory, each load
        reads the user's names and stored totals again, a scan of the whole account's
        rows, which made a 50-document export quadratic (docs/performance.md)."""
        held: Room | None = None
        try:
            async for info in self.each(user_id):
                try:
                    copy, loaded = await self._copy(user_id, info.name)
                except NotFound:
                    continue
                if held is not None:
                    self._registry.release(held)
                held = loaded
                yield info, copy
        finally:
            if held is not None:
                self._registry.release(held)

    async def _copy(self, user_id: UUID, name: str) -> tuple[DocumentCopy, Room | None]:
        """A copy of one state (no await between its two halves), and the room if this
        call loaded it."""
        loaded_here = (user_id, name) not in self._registry.rooms
        room = await self._room(user_id, name)
        copy = DocumentCopy(_content(room), room.doc.get_update())
        await self._stored(room.last_ticket)
        return copy, room if loaded_here else None

    async def update_since(self, user_id: UUID, name: str,
                           state_vector: bytes = EMPTY_STATE) -> bytes:
        """The Yjs v1 update a replica at ``state_vector`` lacks (by default: all of it)."""
        room = await self._room(user_id, name)
        try:
            update, ticket = room.update_since(state_vector)
        except InvalidUpdate:
            raise Invalid("state_vector", "not a Yjs state vector") from None
        await self._stored(ticket)
        return update

    async def apply(self, user_id: UUID, name: str, update: bytes, *,
                    field: str = "update") -> bytes:
        """Apply a Yjs v1 update, as a websocket update is applied; once it is stored,
        the document's state vector. ``field`` names the update in an Invalid error."""
        room = await self._room(user_id, name, create=True)
        try:
            ticket = room.apply_update(update, origin=None)
        except InvalidUpdate:
            raise Invalid(field, "not a valid Yjs v1 update") from None
        except DocumentTooLarge:
            raise TooLarge("the document has reached its size limit") from None
        except QuotaExceeded as exc:
            raise TooLarge(f"storage quota reached: {exc}") from None
        except UpdatesDoNotIntegrate:
            raise Invalid(field, "builds on content the document does not have, past "
                                 "the limit") from None
        if ticket is not None:
            await self._stored(ticket)
        return room.doc.get_state()

    async def delete(self, user_id: UUID, name: str) -> None:
        """Erase the document and its whole history; its sockets close (4404) everywhere."""
        key = (user_id, name)
        if await self._update_log.delete_document(*key) is None:
            raise NotFound("no such document")
        self._registry.drop_document(key)
        await publish_deleted(self._redis, self._engine.instance, key)

    async def restore(self, user_id: UUID, name: str, at: datetime) -> int | None:
        """Bring the document's content back to what it was at ``at``, as one new update
        applied like any other; its size, or None if there was nothing to change."""
        info = await self.info(user_id, name)
        room = await self._room(user_id, name)
        past = await self._update_log.updates_as_of(info.doc_id, at, info.user_id)
        update = await asyncio.to_thread(restore_update, [room.doc.get_update()], past)
        if update is None:
            return None
        await self.apply(user_id, name, update)
        return len(update)

    # -- listing, history -------------------------------------------------------------------

    async def info(self, user_id: UUID, name: str) -> DocumentInfo:
        info = await self._update_log.info(user_id, name)
        if info is None:
            raise NotFound("no such document")
        return info

    async def page(self, user_id: UUID, limit: int, offset: int) -> tuple[list[DocumentInfo], int]:
        """One page of the user's documents, by name, and how many there are."""
        return await self._update_log.list_documents(user_id, limit, offset)

    async def each(self, user_id: UUID) -> AsyncIterator[DocumentInfo]:
        """Every document of the user, by name, however many: read a page at a time."""
        after = ""
        while True:
            infos = await self._update_log.documents_after(user_id, after, _LISTED_AT_ONCE)
            for info in infos:
                yield info
            if len(infos) < _LISTED_AT_ONCE:
                return
            after = infos[-1].name

    async def with_updates(self, min_updates: int) -> list[DocumentInfo]:
        """Every document, of every user, with at least ``min_updates`` stored rows."""
        return await self._update_log.documents_with(min_updates)

    async def compact(self, info: DocumentInfo, *, snapshot_every: timedelta | None,
                      dry_run: bool = False) -> Compaction:
        return await compact_document(self._update_log, info.doc_id,
                                      snapshot_every=snapshot_every, dry_run=dry_run,
                                      user_id=info.user_id)

    async def snapshots(self, info: DocumentInfo) -> list[Snapshot]:
        return await self._update_log.snapshots(info.doc_id, info.user_id)

    async def purge_snapshots(self, older_than: datetime) -> int:
        return await self._update_log.purge_snapshots(older_than)

    async def purge_document_snapshots(self, info: DocumentInfo, *, keep_latest: bool) -> int:
        """Drop the document's snapshots (but its newest with ``keep_latest``)."""
        return await self._update_log.purge_document_snapshots(
            info.doc_id, keep_latest=keep_latest, user_id=info.user_id)

    # -- rooms ------------------------------------------------------------------------------

    async def _room(self, user_id: UUID, name: str, *, create: bool = False) -> Room:
        registry = self._registry
        try:
            room = await registry.get((user_id, name), create=create)
        except DocumentNotFound:
            raise NotFound("no such document") from None
        registry.touch(room)
        try:
            room.build()  # here, so that a document whose storage is broken is Unavailable
        except DocumentUnavailable:
            raise Unavailable("document unavailable, try again") from None
        return room

    async def _stored(self, ticket: int) -> None:
        """Answer only with what is stored: wait for the writer to reach ``ticket``."""
        try:
            await self._engine.writer.wait_committed(ticket)
        except WriteFailed:
            raise Unavailable("storage unavailable, try again") from None


def _content(room: Room) -> dict[str, Any]:
    """The document schema's roots as JSON, all of one state; other roots are left out."""
    with room.doc.transaction():
        return {root: _root(room.doc, root) for root in DOCUMENT_ROOTS}


async def _slices(room: Room, root: str) -> AsyncIterator[list[tuple[str, Any]]]:
    """The (key, JSON value) entries of a map root, ``_ENTRIES_AT_ONCE`` at a time, the
    event loop serving others between two slices. pycrdt keeps the GIL, so a thread
    would not help. An entry deleted meanwhile is left out."""
    shared = room.doc.get(root, type=Map)
    keys = list(shared.keys())
    for start in range(0, len(keys), _ENTRIES_AT_ONCE):
        if start:
            await asyncio.sleep(0)
        with room.doc.transaction():  # closed before the yield: the reader may await
            items = [(key, _json(value)) for key in keys[start:start + _ENTRIES_AT_ONCE]
                     if (value := shared.get(key)) is not None]
        yield items


def _root(doc: Doc[Any], root: str) -> Any:
    return _json(doc.get(root, type=Map)) or {}


def _json(value: Any) -> Any:
    """A shared type or a value as JSON. pycrdt writes a type's JSON text in Rust:
    parsing that is about three times faster than ``to_py``. Numbers come back as JSON
    has them (``100``, not ``100.0``), NaN and infinities as null."""
    if not isinstance(value, Map):
        return value.to_py() if hasattr(value, "to_py") else value
    try:
        return orjson.loads(str(value))
    except orjson.JSONDecodeError:
        return value.to_py()


def _stored_content(stored: list[StoredDocument | None],
                    roots: Sequence[str]) -> dict[int, dict[str, Any]]:
    content = {}
    for document in stored:
        if document is None:
            continue
        doc: Doc[Any] = Doc()
        try:
            with doc.transaction():
                for update in document.updates:
                    doc.apply_update(update)
            content[document.doc_id] = {root: _root(doc, root) for root in roots}
        except Exception:  # bytes that are not an update, a root of another type
            log.exception("stored document %d does not load", document.doc_id)
    return content
