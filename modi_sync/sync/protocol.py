"""Framing of the y-websocket protocol, on top of pycrdt's encoders.

One websocket frame carries one message: a var-uint message type, then for sync
messages a var-uint sync type and a length-prefixed payload. pycrdt builds messages
(``create_update_message`` and friends) but its decoder trusts lengths; this module
only adds the bounds checks a server needs before it touches a room.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycrdt import Decoder, YMessageType, YSyncMessageType, write_message

# y-protocols message types beyond pycrdt's SYNC and AWARENESS.
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

_SYNC_TYPES = frozenset(int(t) for t in YSyncMessageType)


class ProtocolError(ValueError):
    """The frame is not a well-formed y-websocket message."""


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    sync_type: int | None
    payload: bytes


def parse_message(frame: bytes) -> Message:
    decoder = Decoder(frame)
    try:
        kind = decoder.read_var_uint()
        if kind == YMessageType.SYNC:
            sync_type = decoder.read_var_uint()
            if sync_type not in _SYNC_TYPES:
                raise ProtocolError(f"unknown sync message type {sync_type}")
            return Message(kind, sync_type, _read_payload(decoder))
        if kind == YMessageType.AWARENESS:
            return Message(kind, None, _read_payload(decoder))
        if kind in (MESSAGE_QUERY_AWARENESS, MESSAGE_AUTH):
            return Message(kind, None, b"")
    except (IndexError, RuntimeError) as exc:  # pycrdt's decoder ran off the end
        raise ProtocolError("truncated message") from exc
    raise ProtocolError(f"unknown message type {kind}")


def _read_payload(decoder: Decoder) -> bytes:
    length = decoder.read_var_uint()
    start = decoder.i0
    payload = decoder.stream[start : start + length]
    if len(payload) != length:
        raise ProtocolError("payload shorter than its length prefix")
    return payload


def decode_state_vector(state: bytes) -> dict[int, int]:
    """A Yjs state vector as {client id: clock}; ProtocolError if it is not one."""
    decoder = Decoder(state)
    try:
        return {decoder.read_var_uint(): decoder.read_var_uint()
                for _ in range(decoder.read_var_uint())}
    except (IndexError, RuntimeError) as exc:
        raise ProtocolError("truncated state vector") from exc


def sync_step1_message(state_vector: bytes) -> bytes:
    return bytes((YMessageType.SYNC, YSyncMessageType.SYNC_STEP1)) + write_message(state_vector)


def sync_step2_message(update: bytes) -> bytes:
    """pycrdt builds step 2 only inside ``handle_sync_message``; the room needs it alone."""
    return bytes((YMessageType.SYNC, YSyncMessageType.SYNC_STEP2)) + write_message(update)
