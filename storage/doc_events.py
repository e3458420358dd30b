"""The Redis channel that carries document changes between server instances.

One message carries every change one instance published at once (a group commit's
updates go out as one message, not one per update): the sending instance's id (16
bytes), then records of one byte of kind, the owner's user id (16 bytes), the length
of the document's name (1 byte) and of the update (4 bytes), the name, and for an
update the Yjs update itself. Documents travel by (user, name), not by row id: a
receiver may hold a room for a document that had no row when it was loaded. Updates
are published only after they are stored, so a receiver never has to store them. A
receiver skips its own messages by their first 16 bytes, without decoding them.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

CHANNEL = b"modi:docs"
UPDATE = b"U"
DELETED = b"D"
_RECORD = struct.Struct(">c16sBI")  # kind, user id, name length, update length
_MESSAGE_BYTES = 1 << 20  # a batch larger than this is split over several messages

NO_INSTANCE = uuid.UUID(int=0)  # for commands run outside a server (restore)

DocKey = tuple[uuid.UUID, str]  # (owner's user id, document name)


@dataclass(frozen=True, slots=True)
class DocEvent:
    kind: bytes
    key: DocKey
    update: bytes


def encode(instance: uuid.UUID, records: Iterable[tuple[bytes, DocKey, bytes]]) -> list[bytes]:
    """(kind, key, update) records as messages of about ``_MESSAGE_BYTES`` at most."""
    messages: list[bytes] = []
    parts: list[bytes] = [instance.bytes]
    size = 0
    for kind, (user_id, name), update in records:
        if size >= _MESSAGE_BYTES:
            messages.append(b"".join(parts))
            parts, size = [instance.bytes], 0
        raw_name = name.encode()  # at most 64 ASCII characters (contract section 4)
        parts += (_RECORD.pack(kind, user_id.bytes, len(raw_name), len(update)), raw_name,
                  update)
        size += _RECORD.size + len(raw_name) + len(update)
    if size:
        messages.append(b"".join(parts))
    return messages


def decode(data: bytes) -> list[DocEvent]:
    """The records of one message; a truncated record ends it."""
    view = memoryview(data)
    events: list[DocEvent] = []
    at = 16
    while at + _RECORD.size <= len(data):
        kind, user_id, name_length, length = _RECORD.unpack_from(data, at)
        at += _RECORD.size
        if at + name_length + length > len(data):
            break
        name = bytes(view[at:at + name_length]).decode()
        at += name_length
        events.append(DocEvent(kind, (uuid.UUID(bytes=user_id), name),
                               bytes(view[at:at + length])))
        at += length
    return events


async def publish_updates(
    redis: Redis, instance: uuid.UUID, updates: Iterable[tuple[DocKey, bytes]]
) -> None:
    messages = encode(instance, ((UPDATE, key, u) for key, u in updates))
    async with redis.pipeline(transaction=False) as pipe:
        for message in messages:
            pipe.publish(CHANNEL, message)
        await pipe.execute()


async def publish_deleted(redis: Redis, instance: uuid.UUID, key: DocKey) -> None:
    (message,) = encode(instance, [(DELETED, key, b"")])
    await redis.publish(CHANNEL, message)


async def subscribe_doc_events(redis: Redis) -> PubSub:
    """Subscribed on return, so nothing published afterwards is missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    return pubsub


async def doc_events(pubsub: PubSub, ignore: uuid.UUID) -> AsyncIterator[list[DocEvent]]:
    """Each message's changes, except those published by instance ``ignore``."""
    own = ignore.bytes
    async for message in pubsub.listen():
        data = message.get("data")
        if message.get("type") != "message" or data[:16] == own:
            continue
        yield decode(data)
