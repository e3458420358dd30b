"""The Redis channel that carries document changes between server instances.

One message carries every change one instance published at once (a group commit's
updates go out as one message, not one per update): the sending instance's id (16
bytes), the message's number in its sequence (8 bytes; 0 for one outside it: a
deletion, published by whoever erased the document) and when it was sent (Unix time,
a float64: the receiver's bus lag), then records of one byte of
kind, the owner's user id (16 bytes), the length of the document's name (1 byte) and
of the update (4 bytes), the update's seq in its document (8 bytes; 0 for every other
kind), the name, and for an update the Yjs update itself. The seq tells a receiver
how far its room of the document is applied, so that a catch-up after a gap reloads
only the rooms behind their document's counter (``RoomRegistry.catch_up``). Documents
travel by (user, name), not by row id: a receiver may hold a room for a document that
had no row when it was loaded. Updates
are published only after they are stored, so a receiver never has to store them. A
receiver skips its own messages by their first 16 bytes, without decoding them, and
knows it missed some of another instance's when their numbers skip (a message that
failed to go out still used its number).

Two more kinds say who listens (see modi_sync/sync/bus.py): ``H`` (hello), sent by an
instance that starts listening, and ``A``, the answer of each instance that heard it
(its key holds the greeted instance's id).

Awareness (presence, cursors) crosses instances too, and is never stored: ``W``
carries a y-protocols awareness update of a document's clients, ``Q`` asks the
instances holding the document to send theirs (a room just loaded knows of none).
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection

CHANNEL = b"modi:docs"
UPDATE = b"U"
DELETED = b"D"
HELLO = b"H"
ACK = b"A"
AWARENESS = b"W"
AWARENESS_QUERY = b"Q"
_HEADER = struct.Struct(">16sQd")  # sender, its message number, sent at
_RECORD = struct.Struct(">c16sBIQ")  # kind, user id, name length, update length, seq
_MESSAGE_BYTES = 1 << 20  # a batch larger than this is split over several messages

DocKey = tuple[uuid.UUID, str]  # (owner's user id, document name)


@dataclass(frozen=True, slots=True)
class DocEvent:
    kind: bytes
    key: DocKey
    update: bytes
    seq: int = 0  # an update's seq in its document (``UPDATE``); 0 otherwise


@dataclass(frozen=True, slots=True)
class DocMessage:
    sender: uuid.UUID  # the publishing instance
    number: int  # its place in the sender's sequence, from 1 (0: outside it)
    events: list[DocEvent]
    sent_at: float = 0.0  # the sender's clock (Unix time)


Record = tuple[bytes, DocKey, bytes, int]  # (kind, key, update, seq)


def encode(instance: uuid.UUID, records: Iterable[Record], first: int = 0) -> list[bytes]:
    """(kind, key, update, seq) records as messages of about ``_MESSAGE_BYTES`` at most,
    numbered from ``first`` on (all 0 if ``first`` is 0)."""
    messages: list[bytes] = []
    now = time.time()

    def header() -> bytes:
        return _HEADER.pack(instance.bytes, first + len(messages) if first else 0, now)

    parts, size = [header()], 0
    for kind, (user_id, name), update, seq in records:
        if size >= _MESSAGE_BYTES:
            messages.append(b"".join(parts))
            parts, size = [header()], 0
        raw_name = name.encode()  # at most 64 ASCII characters (a document name)
        parts += (_RECORD.pack(kind, user_id.bytes, len(raw_name), len(update), seq),
                  raw_name, update)
        size += _RECORD.size + len(raw_name) + len(update)
    if size:
        messages.append(b"".join(parts))
    return messages


def decode(data: bytes) -> list[DocEvent]:
    """The records of one message; a truncated record ends it."""
    view = memoryview(data)
    events: list[DocEvent] = []
    at = _HEADER.size
    while at + _RECORD.size <= len(data):
        kind, user_id, name_length, length, seq = _RECORD.unpack_from(data, at)
        at += _RECORD.size
        if at + name_length + length > len(data):
            break
        name = bytes(view[at:at + name_length]).decode()
        at += name_length
        events.append(DocEvent(kind, (uuid.UUID(bytes=user_id), name),
                               bytes(view[at:at + length]), seq))
        at += length
    return events


async def publish_deleted(redis: Redis, instance: uuid.UUID, key: DocKey) -> None:
    (message,) = encode(instance, [(DELETED, key, b"", 0)])
    await redis.publish(CHANNEL, message)


class DocChannel:
    """The channel as one instance publishes on it, over a Redis connection of its own.

    Through redis-py's pool and pipeline a PUBLISH cost twice the CPU of the command on
    a held connection (docs/performance.md, "Figures behind the code"); the server's
    publisher is its only user, one command at a time.
    """

    def __init__(self, redis: Redis, instance: uuid.UUID) -> None:
        self._instance = instance
        # redis-py leaves make_connection unannotated; its pool makes AbstractConnections.
        self._conn: AbstractConnection = (
            redis.connection_pool.make_connection())  # type: ignore[no-untyped-call]
        self._sent = 0  # the number of the last message sent, or that failed to go out

    async def publish(self, records: Iterable[Record]) -> int:
        """Send the records; return how many subscribers the last message reached."""
        receivers = 0
        for message in encode(self._instance, records, self._sent + 1):
            self._sent += 1  # used even if this send fails: the receivers see the gap
            receivers = await self._command("PUBLISH", CHANNEL, message)
        return receivers

    def skip(self) -> None:
        """Records were dropped before they were sent: tell the receivers by a gap."""
        self._sent += 1

    async def subscribers(self) -> int:
        """How many connections listen on the channel, this instance's own included."""
        _, count = await self._command("PUBSUB", "NUMSUB", CHANNEL)
        return int(count)

    async def _command(self, *args: bytes | str) -> Any:
        try:
            await self._conn.send_command(*args)
            return await self._conn.read_response()
        except BaseException:
            await self._conn.disconnect()  # its state is unknown: the next call reconnects
            raise

    async def close(self) -> None:
        await self._conn.disconnect()


async def subscribe_doc_events(redis: Redis) -> PubSub:
    """Subscribed on return, so nothing published afterwards is missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    return pubsub


async def doc_events(pubsub: PubSub, ignore: uuid.UUID) -> AsyncIterator[DocMessage]:
    """Each message and its sender, except those published by instance ``ignore``."""
    own = ignore.bytes
    async for message in pubsub.listen():
        data = message.get("data")
        if message.get("type") != "message" or data[:16] == own or len(data) < _HEADER.size:
            continue
        sender, number, sent_at = _HEADER.unpack_from(data)
        yield DocMessage(uuid.UUID(bytes=sender), number, decode(data), sent_at)
