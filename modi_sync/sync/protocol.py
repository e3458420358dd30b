"""Framing of the y-websocket protocol, on top of pycrdt's encoders.

One websocket frame carries one message: a var-uint message type, then for sync
messages a var-uint sync type and a length-prefixed payload; an awareness message's
payload lists (client id, clock, JSON state) entries. pycrdt builds these messages
(``create_update_message`` and friends), but its ``Decoder`` reads a var-uint of any
length, in time quadratic in it, and trusts length prefixes: one frame of 0xff bytes
would hold the event loop for minutes. So every number the server reads from a client
goes through ``Reader`` here, which stops at ``MAX_VAR_UINT_BYTES`` and checks each
length against what is left, before anything reaches pycrdt or a room.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycrdt import YMessageType, YSyncMessageType, write_message

# y-protocols message types beyond pycrdt's SYNC and AWARENESS.
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

# Yjs numbers are JavaScript numbers: lib0 refuses a var-uint past 2^53 as well.
MAX_VAR_UINT = 2**53 - 1
MAX_VAR_UINT_BYTES = 8  # 8 x 7 bits hold 2^53

_SYNC_TYPES = frozenset(int(t) for t in YSyncMessageType)
_NULL_STATE = memoryview(b"null")  # compared as a view: the state is not copied


class ProtocolError(ValueError):
    """The frame is not a well-formed y-websocket message."""


class TooManyEntries(ProtocolError):
    """A list in the message is longer than the caller allows."""


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    sync_type: int | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state_bytes: int  # 0: the client's state is removed


class Reader:
    """Reads lib0 var-uints and length-prefixed byte strings, with every bound checked."""

    __slots__ = ("_data", "_at")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._at

    def var_uint(self) -> int:
        data, at = self._data, self._at
        value = shift = 0
        for i in range(at, min(at + MAX_VAR_UINT_BYTES, len(data))):
            byte = data[i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self._at = i + 1
                if value > MAX_VAR_UINT:
                    raise ProtocolError("number out of range")
                return value
            shift += 7
        if len(data) - at < MAX_VAR_UINT_BYTES:
            raise ProtocolError("truncated number")
        raise ProtocolError("number longer than 8 bytes")

    def var_bytes(self) -> bytes:
        start, end = self._span()
        return self._data[start:end]

    def var_view(self) -> memoryview:
        """A length-prefixed string, as a view into the frame (no copy)."""
        start, end = self._span()
        return memoryview(self._data)[start:end]

    def _span(self) -> tuple[int, int]:
        length = self.var_uint()
        if length > self.left:
            raise ProtocolError("payload shorter than its length prefix")
        start = self._at
        self._at = start + length
        return start, self._at


def parse_message(frame: bytes) -> Message:
    reader = Reader(frame)
    kind = reader.var_uint()
    if kind == YMessageType.SYNC:
        sync_type = reader.var_uint()
        if sync_type not in _SYNC_TYPES:
            raise ProtocolError("unknown sync message type")
        return Message(kind, sync_type, reader.var_bytes())
    if kind == YMessageType.AWARENESS:
        return Message(kind, None, reader.var_bytes())
    if kind in (MESSAGE_QUERY_AWARENESS, MESSAGE_AUTH):
        return Message(kind, None, b"")
    raise ProtocolError("unknown message type")


def check_count(data: bytes, entry_bytes: int) -> None:
    """ProtocolError unless the count that starts ``data`` (of entries taking at least
    ``entry_bytes`` bytes each) fits in it. yrs reserves room for the clients an update
    or state vector claims before it reads one, so four bytes could hold the loop
    (docs/security.md, the threat-model table)."""
    if data and data[0] < 0x80:  # a one-byte count, by far the most common: no Reader
        count, left = data[0], len(data) - 1
    else:
        reader = Reader(data)
        count = reader.var_uint()
        left = reader.left
    if count * entry_bytes > left:
        raise ProtocolError("a count past the end of its bytes")


def decode_state_vector(state: bytes) -> dict[int, int]:
    """A Yjs state vector as {client id: clock}; ProtocolError if it is not one."""
    reader = Reader(state)
    count = reader.var_uint()
    if count * 2 > reader.left:  # each entry takes two bytes at least
        raise ProtocolError("state vector shorter than its count")
    return {reader.var_uint(): reader.var_uint() for _ in range(count)}


def parse_awareness(payload: bytes, most: int) -> list[AwarenessEntry]:
    """The entries of an awareness update, at most ``most`` of them; ProtocolError if
    the payload is malformed or lists more. States are measured, not decoded."""
    reader = Reader(payload)
    count = reader.var_uint()
    if count > most:
        raise TooManyEntries(f"awareness update for more than {most} clients")
    entries = []
    for _ in range(count):
        client_id, clock = reader.var_uint(), reader.var_uint()
        state = reader.var_view()
        # y-protocols sends "null" for a client that left (pycrdt also reads "" so).
        size = 0 if state == _NULL_STATE else len(state)
        entries.append(AwarenessEntry(client_id, clock, size))
    return entries


def sync_step1_message(state_vector: bytes) -> bytes:
    return bytes((YMessageType.SYNC, YSyncMessageType.SYNC_STEP1)) + write_message(state_vector)


def sync_step2_message(update: bytes) -> bytes:
    """pycrdt builds step 2 only inside ``handle_sync_message``; the room needs it alone."""
    return bytes((YMessageType.SYNC, YSyncMessageType.SYNC_STEP2)) + write_message(update)
