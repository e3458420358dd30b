"""Which documents a user has, so that opening a name they never wrote to needs no query.

While a user has rooms in memory, the registry keeps the names of all their documents
that have a row, read with their first load. A name not in that list is a new,
empty document, and its room is made at once instead of waiting for a load batch.

Names are only ever added, never removed: a name wrongly in the list costs one
ordinary load, but a name wrongly missing would show a client an empty document
where one exists. So a name goes in when a room leaves memory (it may have been
written), when another instance or a command publishes an update to it (heard while
the list is still being read, too), and every list is forgotten when the bus may have
missed a message (``RoomRegistry.catch_up``): an instance hears of each document made
elsewhere exactly as it hears of updates to rooms it holds.
"""

from __future__ import annotations

from uuid import UUID

from storage.doc_events import DocKey

# A user with more documents than this gets no list: every open is an ordinary load.
MAX_LISTED_NAMES = 10_000


class DocumentNames:
    def __init__(self) -> None:
        # Complete lists; None for a user read without one (too many names, or the
        # reading failed): their opens are ordinary loads until they leave.
        self._known: dict[UUID, set[str] | None] = {}
        self._listing: dict[UUID, set[str]] = {}  # being read: the names heard meanwhile

    def is_new(self, key: DocKey) -> bool:
        """Whether ``key`` is known to have no row: its user's list lacks the name."""
        names = self._known.get(key[0])
        return names is not None and key[1] not in names

    def want(self, user_id: UUID) -> bool:
        """True if the caller should read ``user_id``'s names (and call ``listed``)."""
        if user_id in self._known or user_id in self._listing:
            return False
        self._listing[user_id] = set()
        return True

    def listed(self, user_id: UUID, names: list[str] | None) -> None:
        """What reading the names gave; None if it failed or there were too many."""
        heard = self._listing.pop(user_id, None)
        if heard is None:
            return  # forgotten meanwhile
        if names is None:
            self._known[user_id] = None
        else:
            heard.update(names)
            self._known[user_id] = heard

    def add(self, key: DocKey) -> None:
        """``key`` may have a row now."""
        user_id, name = key
        names = self._known.get(user_id)
        if names is None:
            names = self._listing.get(user_id)
        if names is not None:
            names.add(name)

    def forget(self, user_id: UUID) -> None:
        self._known.pop(user_id, None)
        self._listing.pop(user_id, None)

    def forget_all(self) -> None:
        """Documents may have been made unheard: read every list again when next wanted."""
        self._known.clear()
        self._listing.clear()
