"""Document history: compaction (merge stored updates) and restore (undo to a date).

Compaction merges the stored Yjs updates into one, through a garbage-collecting Doc:
the client ids and clocks of every item are kept (clients that synced before the
compaction still converge), while the content of deleted items is dropped, so it is
gone from storage. It never rebuilds a document from JSON.

Restore computes the edits that take today's document back to its content at a past
date, made as new operations on top of today's history, so every client converges to
it, online or offline.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from uuid import UUID

from pycrdt import Array, Doc, Map, Text

from storage.update_log import Compaction, UpdateLog

from .contract import DOCUMENT_ROOTS
from .sync.protocol import decode_state_vector


class CompactionRefused(Exception):
    """Merging would lose content (an update whose dependencies were never stored)."""


# Only the schema's roots are read from these documents, and they are maps.
_History = Doc[Map[Any]]


def _doc_from(updates: list[bytes]) -> _History:
    doc: _History = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def merge(updates: list[bytes]) -> bytes:
    """One garbage-collected update equivalent to ``updates`` (CPU-bound: run in a thread)."""
    from pycrdt import get_state

    doc = _doc_from(updates)
    merged_state = decode_state_vector(doc.get_state())
    for update in updates:
        for client, clock in decode_state_vector(get_state(update)).items():
            if merged_state.get(client, 0) < clock:
                # The Doc holds this update as pending, and get_update() would drop it.
                raise CompactionRefused(f"client {client} has content the log cannot place")
    return doc.get_update()


async def compact_document(
    update_log: UpdateLog, doc_id: int, *, snapshot_every: timedelta | None, dry_run: bool = False,
    user_id: UUID | None = None,
) -> Compaction:
    async def merge_in_thread(updates: list[bytes]) -> bytes:
        return await asyncio.to_thread(merge, updates)

    return await update_log.compact(doc_id, merge_in_thread, snapshot_every=snapshot_every,
                                    dry_run=dry_run, user_id=user_id)


def restore_update(current: list[bytes], past: list[bytes]) -> bytes | None:
    """The update that brings the document schema's roots (``DOCUMENT_ROOTS``) of
    ``current`` back to their content in ``past``; None when they already match.
    """
    now, then = _doc_from(current), _doc_from(past)
    captured: list[bytes] = []
    subscription = now.observe(lambda event: captured.append(event.update))
    with now.transaction():
        for name in DOCUMENT_ROOTS:
            _restore_map(now.get(name, type=Map), then.get(name, type=Map))
    now.unobserve(subscription)
    return captured[0] if captured else None


def _restore_map(target: Map[Any], wanted: Map[Any]) -> None:
    # pycrdt declares Map.__iter__ to return an Iterable, not the Iterator it returns.
    for key in [k for k in target if k not in wanted]:  # type: ignore[attr-defined]
        del target[key]
    for key, value in wanted.items():
        current = target.get(key)
        if isinstance(value, Map):
            if not isinstance(current, Map):
                target[key] = Map()
                current = target[key]
            _restore_map(current, value)
        elif isinstance(value, Text | Array):
            if current is None or type(current) is not type(value) or \
                    current.to_py() != value.to_py():
                target[key] = _copy(value)
        elif not _same(current, value):
            target[key] = value


def _copy(value: Text | Array[Any]) -> Text | Array[Any]:
    return Text(value.to_py()) if isinstance(value, Text) else Array(value.to_py())


def _same(current: Any, value: Any) -> bool:
    if isinstance(current, Map | Text | Array):
        return False
    return type(current) is type(value) and current == value or (
        isinstance(current, int | float) and isinstance(value, int | float)
        and not isinstance(current, bool) and not isinstance(value, bool) and current == value
    )
