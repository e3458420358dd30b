"""The Redis channel that carries document changes between server instances.

A message is one byte of kind, the document id (8 bytes), the sending instance's id
(16 bytes), then for an update the Yjs update itself. Updates are published only
after they are stored, so a receiver never has to store them.
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
_HEADER = struct.Struct(">cq16s")

NO_INSTANCE = uuid.UUID(int=0)  # for commands run outside a server (restore)


@dataclass(frozen=True, slots=True)
class DocEvent:
    kind: bytes
    doc_id: int
    instance: uuid.UUID
    update: bytes


def _encode(kind: bytes, doc_id: int, instance: uuid.UUID, update: bytes = b"") -> bytes:
    return _HEADER.pack(kind, doc_id, instance.bytes) + update


async def publish_updates(
    redis: Redis, instance: uuid.UUID, updates: Iterable[tuple[int, bytes]]
) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for doc_id, update in updates:
            pipe.publish(CHANNEL, _encode(UPDATE, doc_id, instance, update))
        await pipe.execute()


async def publish_deleted(redis: Redis, instance: uuid.UUID, doc_id: int) -> None:
    await redis.publish(CHANNEL, _encode(DELETED, doc_id, instance))


async def subscribe_doc_events(redis: Redis) -> PubSub:
    """Subscribed on return, so nothing published afterwards is missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    return pubsub


async def doc_events(pubsub: PubSub) -> AsyncIterator[DocEvent]:
    async for message in pubsub.listen():
        data = message.get("data")
        if message.get("type") != "message" or len(data) < _HEADER.size:
            continue
        kind, doc_id, instance = _HEADER.unpack_from(data)
        yield DocEvent(kind, doc_id, uuid.UUID(bytes=instance), data[_HEADER.size:])
