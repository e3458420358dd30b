"""A room: one user's document in memory, its connections and their awareness.

The room's Doc is a cache of the stored update log. An update is applied to it first
(that is the validation: it must apply), queued for storage, and sent to the other
connections only when the writer reports it stored.

The Doc is built from the stored updates only when something needs it (an update to
apply, a state vector to answer, awareness). Until then a room answers from what was
loaded: a new document needs no Doc at all, and a fresh client of a document stored
as one row (what compaction leaves) gets that row as it is, so the client applies it
while the server builds its Doc, instead of waiting for the build and the re-encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from pycrdt import (
    Awareness,
    Doc,
    TransactionEvent,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    merge_updates,
)

from ..contract import CloseCode
from ..logs import doc_field
from ..metrics import UPDATES_FANNED_OUT, UPDATES_RECEIVED
from .connection import SHARES, Connection, frame
from .pending import lacks
from .protocol import (
    ProtocolError,
    TooManyEntries,
    check_count,
    decode_state_vector,
    parse_awareness,
    sync_step1_message,
    sync_step2_message,
)
from .quota import Usage

if TYPE_CHECKING:
    from storage.update_log import StoredDocument

    from .writer import GroupCommitWriter

log = logging.getLogger(__name__)

RoomKey = tuple[UUID, str]
EMPTY = b"\x00\x00"  # a Yjs v1 update that changes nothing
EMPTY_STATE = b"\x00"  # the state vector of an empty document (a fresh client's)
REMOTE = "another instance"  # the origin of awareness states heard on the bus
_EMPTY_STEP1 = sync_step1_message(EMPTY_STATE)


class InvalidUpdate(ValueError):
    """The bytes are not a Yjs v1 update that applies to this document."""


class DocumentTooLarge(ValueError):
    """Storing the update would take the document past its size limit."""


class DocumentUnavailable(Exception):
    """The stored updates do not load; the room closed its connections and is gone."""


class UpdatesDoNotIntegrate(ValueError):
    """Updates whose dependencies never arrived passed the room's budget: the room
    closed its connections and is gone, taking them out of memory."""


class TooManyAwarenessClients(ValueError):
    """A connection spoke for more awareness clients than it may."""


class AwarenessTooLarge(ValueError):
    """A connection's awareness states passed their size limit."""


@dataclass(frozen=True, slots=True)
class RoomLimits:
    max_bytes: int = 64 * 1024 * 1024  # stored bytes of the document
    max_pending_bytes: int = 1024 * 1024  # received bytes that wait for dependencies
    max_awareness_clients: int = 8  # per connection
    max_awareness_bytes: int = 64 * 1024  # per connection


def _check_state_vector(state_vector: bytes) -> None:
    try:
        decode_state_vector(state_vector)
    except ProtocolError as exc:
        raise InvalidUpdate(f"bad state vector: {exc}") from exc


def _check_count(data: bytes, entry_bytes: int) -> None:
    """Before yrs sees an update or a state vector: its count of clients must fit."""
    try:
        check_count(data, entry_bytes)
    except ProtocolError as exc:
        raise InvalidUpdate(str(exc)) from exc


class Room:
    def __init__(
        self,
        key: RoomKey,
        doc_id: int | None,
        updates: list[bytes],
        writer: GroupCommitWriter,
        *,
        limits: RoomLimits,
        on_broken: Callable[[Room], None],
        on_grown: Callable[[Room], None] | None = None,
        usage_of: Callable[[UUID], Usage | None] | None = None,
        share_awareness: Callable[[RoomKey, bytes], None] | None = None,
        on_awareness: Callable[[Room], None] | None = None,
        last_seq: int = 0,
    ) -> None:
        """``share_awareness``: sends an awareness update of this room's clients to the
        other instances (bus.py); ``on_awareness``: told when the room holds awareness
        states, which expire unless renewed (``expire_awareness``). ``last_seq``: the
        document's counter as loaded with ``updates``."""
        self.key = key
        self.doc_id = doc_id  # None until the document's first update is stored
        self.connections: set[Connection] = set()
        self.last_ticket = 0  # writer ticket of the newest update applied here
        # Every stored update of the document numbered up to here is applied here (a
        # catch-up leaves the room alone if the document's counter is no further). The
        # seqs applied past a hole (an update of another instance's that has not
        # arrived) wait in _seqs_ahead, made only when there is one.
        self.applied_seq = last_seq
        self._seqs_ahead: set[int] | None = None
        self.stored_bytes = sum(len(u) for u in updates)
        self.stored_updates = len(updates)
        self.compacted_at = float("-inf")  # event-loop time of the last compaction
        self._writer = writer
        self._limits = limits
        self._usage_of = usage_of  # the user's quota, None while unknown (quota.py)
        self._on_broken = on_broken
        self._on_grown = on_grown
        self._loaded: list[bytes] | None = updates  # until the Doc is built from them
        self._doc: Doc[Any] | None = None  # roots of every kind: clients make them
        self._diff: bytes | None = None
        self._observing = False  # subscribed on the first change: subscriptions cost memory
        self._awareness: Awareness | None = None  # made on first use: most rooms never need it
        self._awareness_owner: dict[int, Connection] = {}  # who speaks for each client id
        self._share_awareness = share_awareness
        self._on_awareness = on_awareness
        # Client updates not (all) integrated yet, and their bytes.
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # Client updates of this turn to ask that of, at its end: (update, diff, origin).
        self._unchecked: list[tuple[bytes, bytes | None, Any]] = []
        self.broken = False  # closed its connections and left memory (``_break``)

    # -- documents --------------------------------------------------------------------

    @property
    def doc(self) -> Doc[Any]:
        """The document, built from the stored updates on first use."""
        return self._doc if self._doc is not None else self.build()

    def build(self) -> Doc[Any]:
        """Build the Doc now, if it is not built; raise DocumentUnavailable if it cannot be."""
        if self._doc is not None:
            return self._doc
        # Building blocks the loop for as long as it takes (tens of ms for a large
        # document): what is queued for the connections goes out first.
        for conn in self.connections:
            conn.flush()
        doc: Doc[Any] = Doc()
        try:
            with doc.transaction():  # one transaction: faster than merging them first
                for update in self._loaded or ():
                    doc.apply_update(update)
        except Exception as exc:  # storage holds bytes that are not an update
            log.exception("the stored updates of %s/%s do not load", *self.key,
                          extra=doc_field(self.key))
            self._break(CloseCode.INTERNAL_ERROR, "document unavailable")
            raise DocumentUnavailable(str(exc)) from exc
        self._doc, self._loaded = doc, None
        return doc

    @property
    def exists(self) -> bool:
        """Whether something of the document is stored, or on its way to storage (the
        first update may have come from another instance: no row id known here yet)."""
        return self.doc_id is not None or self.stored_updates > 0

    @property
    def built(self) -> bool:
        """Whether the Doc exists; until then a room is only its stored updates."""
        return self._doc is not None

    def _capture_diff(self, event: TransactionEvent) -> None:
        self._diff = event.update

    def _apply(self, doc: Doc[Any], update: bytes) -> bytes | None:
        """Apply ``update``; return what it changed (None or EMPTY: nothing)."""
        if not self._observing:
            doc.observe(self._capture_diff)
            self._observing = True
        self._diff = None
        try:
            doc.apply_update(update)
        finally:
            diff, self._diff = self._diff, None
        return diff

    def apply_update(self, update: bytes, origin: Any) -> int | None:
        """Apply, queue for storage; return the writer ticket, or None if nothing changed.

        Raises InvalidUpdate, DocumentTooLarge or QuotaExceeded and leaves the document
        untouched. Whether all of the update is in the document is asked at the end of
        the turn (``_check_turn``), or at once for an HTTP request (no ``origin``),
        which then gets UpdatesDoNotIntegrate once the room has closed.
        """
        if update == EMPTY:  # e.g. the step 2 of a client with nothing new
            return None
        UPDATES_RECEIVED.inc()
        _check_count(update, 3)  # a client's structs take three bytes at least
        if self.stored_bytes + len(update) > self._limits.max_bytes:
            raise DocumentTooLarge(f"document would exceed {self._limits.max_bytes} bytes")
        new_document = not self.exists
        usage = self._usage_of(self.key[0]) if self._usage_of is not None else None
        if usage is not None:
            usage.check(len(update), new_document=new_document)
        doc = self.doc  # outside the try: a stored update that does not load is not the sender's
        try:
            diff = self._apply(doc, update)
        except Exception as exc:  # yrs reports every decoding problem as ValueError
            raise InvalidUpdate(str(exc)) from exc
        ticket = None
        # What changed, not what was sent: a reconnecting client resends its whole state,
        # and only the part new to the server is worth storing and forwarding.
        if diff is not None and diff != EMPTY:
            self.stored_bytes += len(diff)
            self.stored_updates += 1
            if usage is not None:
                usage.stored(len(diff), new_document=new_document)
            self.last_ticket = ticket = self._writer.submit(self, diff, origin)
        if diff != update:  # what was sent may not all be in the document
            if origin is None:  # an HTTP request: its answer says so
                self._count_pending([(update, diff, origin)])
            else:
                if not self._unchecked:
                    asyncio.get_running_loop().call_soon(self._check_turn)
                self._unchecked.append((update, diff, origin))
        return ticket

    def _check_turn(self) -> None:
        batch, self._unchecked = self._unchecked, []
        if not self.broken:
            with contextlib.suppress(UpdatesDoNotIntegrate):  # the sender is closed already
                self._count_pending(batch)

    def _count_pending(self, batch: list[tuple[bytes, bytes | None, Any]]) -> None:
        """Count the updates of ``batch`` that wait for dependencies (pending.py),
        within the room's budget.

        The updates of a turn are asked about together first (one state vector, one
        merge): a busy room pays once per turn, not once per update. Past the budget
        the sender is closed (1008), and the room closes its other connections and
        leaves memory: only a new Doc, loaded from storage, is rid of what yrs holds
        aside. The clients reconnect and resend what they have.
        """
        state = self.doc.get_state()
        if self._pending and any(diff for _, diff, _ in batch):
            self._recheck_pending(state)
        if len(batch) > 1:
            updates = [u for u, _, _ in batch]
            diffs = [d for _, d, _ in batch if d]
            if not lacks(merge_updates(*updates), state,
                         merge_updates(*diffs) if diffs else None):
                return
        for update, diff, origin in batch:
            if lacks(update, state, diff):
                self._pending.append(update)
                self._pending_bytes += len(update)
                if self._pending_bytes > self._limits.max_pending_bytes:
                    self._too_much_pending(origin)

    def _too_much_pending(self, origin: Any) -> None:
        log.warning("%s/%s: %d bytes of updates wait for dependencies; reloading the room",
                    *self.key, self._pending_bytes, extra=doc_field(self.key))
        if isinstance(origin, Connection):
            origin.close(CloseCode.POLICY, "updates do not integrate")
        self._break(CloseCode.INTERNAL_ERROR, "document reloaded")
        raise UpdatesDoNotIntegrate(f"more than {self._limits.max_pending_bytes} bytes wait")

    def _recheck_pending(self, state: bytes) -> None:
        """Forget the waiting updates that are in the document now."""
        still = [u for u in self._pending if lacks(u, state)]
        if len(still) != len(self._pending):
            self._pending = still
            self._pending_bytes = sum(len(u) for u in still)

    def merge(self, updates: list[bytes]) -> bytes:
        """This room's updates of one batch, as the one row the writer stores for them."""
        merged = merge_updates(*updates)
        self.stored_updates -= len(updates) - 1
        self.stored_bytes -= sum(len(u) for u in updates) - len(merged)
        return merged

    def committed(self, update: bytes, origin: Any, seq: int) -> None:
        """Called by the writer with this room's (merged) update of one stored batch.

        Now the others may see it, framed once for all of them: a busy room costs each
        peer one message per batch rather than one per update. A peer whose own update
        was merged with others' gets its own changes back too; Yjs ignores what it
        already has.
        """
        self._broadcast(create_update_message(update), origin)
        self._applied(seq)
        if self._on_grown is not None:
            self._on_grown(self)

    def apply_stored(self, update: bytes, seq: int = 0) -> None:
        """An update another instance (or a command) already stored as ``seq`` (0: not
        known): apply and fan out."""
        if self._apply_stored(update):
            self.stored_bytes += len(update)
            self.stored_updates += 1
            self._applied(seq)

    def catch_up(self, stored: StoredDocument) -> None:
        """What storage holds now, read again because bus messages may have been lost:
        apply it, and send the connections what was new to this room."""
        if self.doc_id is None:
            self.doc_id = stored.doc_id
        if stored.updates and self._apply_stored(merge_updates(*stored.updates)):
            self.stored_updates = max(self.stored_updates, len(stored.updates))
            self.stored_bytes = max(self.stored_bytes, sum(len(u) for u in stored.updates))
            self._applied_through(stored.last_seq)

    def _applied(self, seq: int) -> None:
        """The stored update ``seq`` is applied here. Seqs of one document are dense
        (each group commit takes the next ones of its counter), so a seq past
        ``applied_seq + 1`` means one in between has not arrived yet."""
        if seq == self.applied_seq + 1:
            self._applied_through(seq)
        elif seq > self.applied_seq:
            if self._seqs_ahead is None:
                self._seqs_ahead = set()
            self._seqs_ahead.add(seq)

    def _applied_through(self, seq: int) -> None:
        """Every stored update up to ``seq`` is applied here."""
        self.applied_seq = max(self.applied_seq, seq)
        ahead = self._seqs_ahead
        if ahead is None:
            return
        while self.applied_seq + 1 in ahead:
            self.applied_seq += 1
        ahead.difference_update([s for s in ahead if s <= self.applied_seq])
        if not ahead:
            self._seqs_ahead = None

    def _apply_stored(self, update: bytes) -> bool:
        try:
            diff = self._apply(self.doc, update)
        except Exception:
            log.exception("a stored update of %s/%s does not apply; reloading the room",
                          *self.key, extra=doc_field(self.key))
            self.write_failed()
            return False
        if diff is not None and diff != EMPTY:
            self._broadcast(create_update_message(diff), None)
            if self._pending:  # what another client sent may have been waiting for it
                self._recheck_pending(self.doc.get_state())
        return True

    def compacted(self, removed_updates: int, removed_bytes: int) -> None:
        self.stored_updates -= removed_updates
        self.stored_bytes -= removed_bytes

    def _broadcast(self, message: bytes, origin: Any) -> None:
        data = frame(message)  # framed once, written to every peer as it is
        sent = 0
        for conn in self.connections:
            if conn is not origin:
                conn.send_frame(data)
                sent += 1
        UPDATES_FANNED_OUT.inc(sent)

    def write_failed(self) -> None:
        """Storage failed: what is in memory may not be stored, so this room must go.

        Clients reconnect, resend what they have, and nothing they hold is lost.
        """
        self._break(CloseCode.INTERNAL_ERROR, "storage unavailable")

    def _break(self, code: int, reason: str) -> None:
        self.broken = True
        self.close_all(code, reason)
        self._on_broken(self)

    def close_all(self, code: int, reason: str) -> None:
        for conn in self.connections:
            conn.close(code, reason)

    def sync_step1(self) -> bytes:
        if self._doc is None and not self._loaded:
            return _EMPTY_STEP1  # a new document: no Doc needed to say so
        return create_sync_message(self.doc)

    def update_since(self, state_vector: bytes) -> tuple[bytes, int]:
        """What a peer at ``state_vector`` lacks, and the ticket to be stored before it goes."""
        stored = self._loaded
        if self._doc is None and stored is not None:  # unchanged since it was loaded
            if not stored:
                if state_vector != EMPTY_STATE:
                    _check_state_vector(state_vector)
                return EMPTY, self.last_ticket
            if len(stored) == 1 and state_vector == EMPTY_STATE:
                return stored[0], self.last_ticket  # the one stored update is the whole state
        _check_count(state_vector, 2)  # a client and its clock
        doc = self.doc
        try:
            update = doc.get_update(state_vector)
        except Exception as exc:
            raise InvalidUpdate(f"bad state vector: {exc}") from exc
        return update, self.last_ticket

    def greet(self, conn: Connection) -> None:
        """Send a new connection the server's sync step 1 and the awareness states known.

        When the Doc is not built yet, this waits one turn of the event loop: the
        client's own step 1 has usually arrived by then, and is answered from the
        stored update before the Doc is built for the step 1.
        """
        if self._doc is None and self._loaded:
            asyncio.get_running_loop().call_soon(self._greet, conn)
        else:
            self._greet(conn)

    def _greet(self, conn: Connection) -> None:
        if conn.closing or conn not in self.connections:
            return
        try:
            step1 = self.sync_step1()
        except DocumentUnavailable:
            return  # the room closed its connections
        conn.send(step1)
        awareness = self.awareness_message()
        if awareness is not None:
            conn.send(awareness)

    def sync_step2(self, state_vector: bytes) -> tuple[bytes, int]:
        """The reply to a client's step 1 and the ticket that must be stored before it."""
        update, ticket = self.update_since(state_vector)
        return sync_step2_message(update), ticket

    # -- awareness --------------------------------------------------------------------

    @property
    def awareness(self) -> Awareness:
        if self._awareness is None:
            self._awareness = Awareness(self.doc)
            self._awareness.set_local_state(None)  # the server itself is nobody's peer
        return self._awareness

    def apply_awareness(self, conn: Connection, payload: bytes, message: bytes) -> None:
        """Apply a connection's awareness update and pass it on to the others.

        A connection speaks for the client ids it names (a y-websocket provider names
        one), at most ``max_awareness_clients`` of them with states of at most
        ``max_awareness_bytes`` in all; pycrdt keeps a clock for every id it has ever
        seen, so the ids a connection named are forgotten when it leaves (``remove``).
        """
        limits = self._limits
        try:
            entries = parse_awareness(payload, limits.max_awareness_clients)
        except TooManyEntries as exc:
            raise TooManyAwarenessClients(str(exc)) from exc
        except ProtocolError as exc:
            raise InvalidUpdate(f"bad awareness update: {exc}") from exc
        spoken = dict(conn.awareness)
        spoken.update((e.client_id, e.state_bytes) for e in entries)
        if len(spoken) > limits.max_awareness_clients:
            raise TooManyAwarenessClients(f"more than {limits.max_awareness_clients} ids")
        if sum(spoken.values()) > limits.max_awareness_bytes:
            raise AwarenessTooLarge(f"more than {limits.max_awareness_bytes} bytes")
        try:
            self.awareness.apply_awareness_update(payload, conn)
        except Exception as exc:  # a state that is not JSON, say
            raise InvalidUpdate(f"bad awareness update: {exc}") from exc
        for client_id in spoken.keys() - conn.awareness.keys():
            previous = self._awareness_owner.get(client_id)
            if previous is not None and previous is not conn:  # the client moved here
                previous.awareness.pop(client_id, None)
            self._awareness_owner[client_id] = conn
        conn.awareness = spoken
        self._broadcast(message, conn)
        self._share(conn, payload)
        if self._on_awareness is not None:
            self._on_awareness(self)

    def _share(self, conn: Connection, payload: bytes) -> None:
        """Send a connection's awareness update to the other instances, within its
        budget; past it, its latest state goes once the budget has room again."""
        if self._share_awareness is None:
            return
        if conn.shares.take():
            self._share_awareness(self.key, payload)
        elif not conn.share_due:
            conn.share_due = True
            asyncio.get_running_loop().call_later(
                1 / SHARES.requests * SHARES.window_seconds, self._share_due, conn)

    def _share_due(self, conn: Connection) -> None:
        conn.share_due = False
        if conn in self.connections:
            update = self.local_awareness(conn)
            if update is not None:
                self._share(conn, update)

    def local_awareness(self, conn: Connection | None = None) -> bytes | None:
        """The awareness update of the clients of ``conn`` (of every connection here if
        None), or None if they have no state."""
        owners = self._awareness_owner
        ids = [cid for cid, owner in owners.items() if conn is None or owner is conn]
        if self._awareness is None or not ids:
            return None
        known = [cid for cid in ids if cid in self._awareness.states]
        return self._awareness.encode_awareness_update(known) if known else None

    def apply_remote_awareness(self, update: bytes) -> None:
        """An awareness update of this document's clients on another instance: pass it
        on to the connections here. The other instance checked it against its limits."""
        awareness = self.awareness
        try:
            awareness.apply_awareness_update(update, REMOTE)
        except Exception as exc:  # an instance of another version, say
            log.warning("an awareness update from another instance does not apply: %s",
                        exc, extra=doc_field(self.key))
            return
        for cid in [cid for cid in awareness.meta if cid not in awareness.states
                    and cid not in self._awareness_owner]:
            awareness.meta.pop(cid, None)  # left: no clock kept for it
        self._broadcast(create_awareness_message(update), None)
        if self._on_awareness is not None:
            self._on_awareness(self)

    def expire_awareness(self, timeout: float) -> bool:
        """Remove the states not renewed within ``timeout`` seconds, telling the
        connections here: a frozen tab's (the other instances are told too), or those of
        another instance's clients (that instance died, say; each instance expires those
        itself). Whether any states remain."""
        if self._awareness is None:
            return False
        awareness = self._awareness
        oldest = (time.time() - timeout) * 1000  # pycrdt's clock: wall time, in ms
        stale = [cid for cid in awareness.states if awareness.meta[cid]["lastUpdated"] <= oldest]
        if not stale:
            return bool(awareness.states)
        awareness.remove_awareness_states(stale, REMOTE)
        removal = awareness.encode_awareness_update(stale)
        self._broadcast(create_awareness_message(removal), None)
        local = False
        for cid in stale:
            awareness.meta.pop(cid, None)
            owner = self._awareness_owner.pop(cid, None)
            if owner is not None:
                owner.awareness.pop(cid, None)
                local = True
        if local and self._share_awareness is not None:
            self._share_awareness(self.key, removal)
        return bool(awareness.states)

    def awareness_message(self) -> bytes | None:
        """Every known awareness state, for a new or asking connection."""
        if self._awareness is None:
            return None
        ids = list(self._awareness.states)
        if not ids:
            return None
        return create_awareness_message(self.awareness.encode_awareness_update(ids))

    # -- connections ------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)

    def remove(self, conn: Connection) -> None:
        """Forget a connection and its awareness clients; tell the others they left."""
        self.connections.discard(conn)
        if not conn.awareness:
            return
        owned = [cid for cid in conn.awareness if self._awareness_owner.get(cid) is conn]
        conn.awareness = {}
        for cid in owned:
            del self._awareness_owner[cid]
        awareness = self.awareness
        gone = [cid for cid in owned if cid in awareness.states]
        if gone:
            awareness.remove_awareness_states(gone, None)
            removal = awareness.encode_awareness_update(gone)
            self._broadcast(create_awareness_message(removal), None)
            if self._share_awareness is not None:  # a departure is never held back
                self._share_awareness(self.key, removal)
        for cid in owned:
            awareness.meta.pop(cid, None)
