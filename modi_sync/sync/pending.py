"""Telling whether an update applied in full, or left parts waiting for what they build on.

yrs keeps the structs of an update whose dependencies are missing, and deletions of
items it does not have yet, aside in its Doc until they arrive, without limit; its
pending deletions are also merged again on every later update (docs/sync.md,
"Updates that wait"). None of it is stored or visible, so the document size limit
does not see it. The room therefore asks, after applying a client's update, whether
all of it is in the document now, and counts what is not (room.py).

pycrdt offers no view of yrs's pending state, so the question is put with what it
does offer, all computed in Rust: cutting from the update every struct the document
has (``get_update`` against the document's state vector) must leave no struct, and
every deletion left must name an id below the state vector.
"""

from __future__ import annotations

import re

from pycrdt import ContentAttribute, IdMap, IdSet, get_update

_VAR_UINT = rb"[\x80-\xff]*[\x00-\x7f]"
_COUNT = re.compile(_VAR_UINT)
_ENTRY = re.compile(b"(" + _VAR_UINT + b")(" + _VAR_UINT + b")")
# An IdMap keeps ranges only with an attribute to attach; which one does not matter.
_MARK = [ContentAttribute("known", True)]
_NO_DELETIONS = b"\x00"


def lacks(update: bytes, state_vector: bytes, applied: bytes | None = None) -> bool:
    """Whether part of ``update`` is not in the document whose state is
    ``state_vector``: a struct it lacks, or a deletion of an item it does not have.

    ``applied``, what applying the update changed (its transaction's update), spares
    the costlier deletion check when every deletion of the update was applied then.
    """
    rest = get_update(update, state_vector)
    if rest[0] != 0:  # the count of clients with structs the document lacks
        return True
    deletions = rest[1:]
    if deletions == _NO_DELETIONS:
        return False
    if applied is not None and get_update(applied, state_vector)[1:] == deletions:
        return False
    return bool(_ids(deletions) - _below(state_vector))


def _ids(delete_set: bytes) -> IdMap:
    return IdMap.from_set(IdSet.decode(delete_set), _MARK)


def _below(state_vector: bytes) -> IdMap:
    """The ids below a state vector, as ranges ``[0, clock)`` per client.

    A state vector is a count and (client, clock) pairs; a delete set, which IdSet
    reads, is a count and (client, ranges, (start, length)...) entries. The pairs are
    rewritten to one-range entries by a regular expression, in C. The input comes from
    yrs, so its numbers are well-formed.
    """
    count = _COUNT.match(state_vector)
    assert count is not None
    entries = _ENTRY.sub(b"\\1\x01\x00\\2", state_vector[count.end():])
    return _ids(count.group() + entries)
