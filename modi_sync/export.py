"""The GDPR export (access and portability): everything held about a user, as one JSON
document (docs/gdpr.md, docs/api.md "GDPR").

It is written as a stream of chunks, never whole: one document at a time, through the
documents service, and every list a page at a time by keyset, so the memory it takes
is that of the largest document, not of the account. ``open`` does what can fail with
an answer (the account, the audit entry) before the first byte, so that a caller can
still answer an error; once the chunks flow, an error can only cut the stream short.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import orjson

from storage.audit import StoredEntry
from storage.consents import Consent
from storage.foods import Food
from storage.images import ImageRecord
from storage.update_log import DocumentInfo
from storage.users import User

from .audit import Actor
from .documents import DocumentCopy, Documents
from .errors import NotFound
from .foods import food_json
from .runtime import Storage

FORMAT = 1  # the export's own version: a change of its shape is a new number
PAGE = 500  # rows read per query of each list

_T = TypeVar("_T")
Chunks = AsyncGenerator[bytes, None]


class Exporter:
    def __init__(self, storage: Storage, documents: Documents) -> None:
        self._storage = storage
        self._documents = documents

    async def open(self, user_id: UUID, actor: Actor) -> Chunks:
        """The export of ``user_id`` as chunks of JSON bytes; NotFound if there is no
        such account. Logged before the first chunk, so the log holds every export
        that may have left, and the export shows its own entry."""
        user = await self._storage.users.by_id(user_id)
        if user is None:
            raise NotFound("no such account")
        await self._storage.audit.append(actor.entry(
            "account.exported", "user", user_id=user_id, resource_id=str(user_id),
            details={"format": FORMAT}))
        return self._chunks(user)

    async def _chunks(self, user: User) -> Chunks:
        head = {"format": FORMAT, "exported_at": datetime.now(UTC).isoformat(),
                "profile": profile_json(user)}
        yield b'{"data":' + orjson.dumps(head)[:-1]  # the object stays open
        yield b',"consents":'
        async for chunk in _array(self._consents(user.id), consent_json):
            yield chunk
        yield b',"documents":'
        async for chunk in _array(self._document_pages(user.id),
                                  lambda pair: document_json(*pair)):
            yield chunk
        yield b',"foods":'
        async for chunk in _array(self._foods(user.id), food_json):
            yield chunk
        yield b',"images":'
        async for chunk in _array(self._images(user.id), lambda pair: exported_image_json(*pair)):
            yield chunk
        yield b',"audit":'
        async for chunk in _array(self._audit(user.id), audit_json):
            yield chunk
        yield b"}}"

    # -- the lists, a page at a time ------------------------------------------------------

    def _consents(self, user_id: UUID) -> AsyncGenerator[list[Consent], None]:
        store = self._storage.consents
        return _pages(lambda after: store.after(user_id, after, PAGE),
                      lambda consent: consent.id, 0)

    def _audit(self, user_id: UUID) -> AsyncGenerator[list[StoredEntry], None]:
        audit = self._storage.audit
        return _pages(lambda after: audit.after(user_id, after, PAGE),
                      lambda stored: stored.id, 0)

    def _foods(self, user_id: UUID) -> AsyncGenerator[list[Food], None]:
        foods = self._storage.foods
        first: UUID | None = None
        return _pages(lambda after: foods.by_author(user_id, after, PAGE),
                      lambda food: food.id, first)

    async def _images(self, user_id: UUID,
                      ) -> AsyncGenerator[list[tuple[ImageRecord, bytes | None]], None]:
        """One image per page: a photo still waiting for its reading is held whole (up
        to 10 MB), so photos are read one at a time."""
        images = self._storage.images
        for record in await images.of_user(user_id):
            yield [(record, await images.data(user_id, record.id))]

    async def _document_pages(
            self, user_id: UUID) -> AsyncGenerator[list[tuple[DocumentInfo, DocumentCopy]], None]:
        """One document per page: each is read, written out and let go before the next."""
        async with contextlib.aclosing(self._documents.copies(user_id)) as copies:
            async for info, copy in copies:
                yield [(info, copy)]


async def _pages(fetch: Callable[[_T], Awaitable[list[Any]]],
                 key: Callable[[Any], _T], start: _T) -> AsyncGenerator[list[Any], None]:
    """Every row, a page at a time: each page starts past the last key of the one before."""
    after = start
    while True:
        rows = await fetch(after)
        if rows:
            yield rows
        if len(rows) < PAGE:
            return
        after = key(rows[-1])


async def _array(pages: AsyncGenerator[Iterable[_T], None],
                 to_json: Callable[[_T], Any]) -> Chunks:
    """A JSON array, one chunk per page. The pages are closed with it: an export cut
    short lets go of what its reading holds (a room) at once, not when collected."""
    sep = b"["
    async with contextlib.aclosing(pages):
        async for page in pages:
            items = [orjson.dumps(to_json(item)) for item in page]
            if items:
                yield sep
                yield b",".join(items)  # one document's is large: not copied once more
                sep = b","
    yield b"[]" if sep == b"[" else b"]"


# -- each item as JSON ------------------------------------------------------------------


def profile_json(user: User) -> dict[str, Any]:
    return {"id": str(user.id), "email": user.email, "role": user.role,
            "created_at": user.created_at.isoformat(),
            "updated_at": user.updated_at.isoformat()}


def consent_json(consent: Consent) -> dict[str, Any]:
    return {"id": consent.id, "document": consent.document, "version": consent.version,
            "action": "accepted" if consent.version is not None else "withdrawn",
            "at": consent.at.isoformat()}


def document_json(info: DocumentInfo, copy: DocumentCopy) -> dict[str, Any]:
    return {"name": info.name, "updates": info.updates, "size_bytes": info.size_bytes,
            "updated_at": info.updated_at.isoformat(), "content": copy.content,
            "update": base64.b64encode(copy.update).decode("ascii")}


def audit_json(stored: StoredEntry) -> dict[str, Any]:
    """Every column held, the email and address included: the export is what is held."""
    entry = stored.entry
    return {"id": stored.id, "at": stored.at.isoformat(), "action": entry.action,
            "resource_type": entry.resource_type, "resource_id": entry.resource_id,
            "request_id": entry.request_id, "email": entry.email, "ip": entry.ip,
            "details": entry.details}


def image_json(record: ImageRecord) -> dict[str, Any]:
    """An image and its job as its owner sees them (GET /api/v1/images/{id})."""
    return {
        "id": str(record.id),
        "status": record.status,
        "doc": record.doc_name,
        "content_type": record.content_type,
        "width": record.width,
        "height": record.height,
        "size": record.size,
        "attempts": record.attempts,
        "created_at": record.created_at.isoformat(),
        "finished_at": None if record.finished_at is None else record.finished_at.isoformat(),
        "result": record.result,
        "error": record.error if record.status == "failed" else None,
    }


def exported_image_json(record: ImageRecord, data: bytes | None) -> dict[str, Any]:
    """With the photo itself while it is held (until its job ends), base64."""
    return {**image_json(record),
            "data": None if data is None else base64.b64encode(data).decode("ascii")}
