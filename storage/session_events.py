"""The Redis channel that tells every instance a user's sessions ended, or that the
user withdrew consent to processing: either way, their sockets close."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

CHANNEL = "modi:sessions-ended"
_RESTRICTED = " restricted"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    user_id: UUID
    restricted: bool = False  # consent withdrawn (tokens live on), not sessions ended


async def publish_session_event(redis: Redis, event: SessionEvent) -> None:
    await redis.publish(CHANNEL, str(event.user_id) + (_RESTRICTED if event.restricted else ""))


async def subscribe_session_events(redis: Redis) -> PubSub:
    """Subscribed on return, so nothing published afterwards is missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    return pubsub


async def session_events(pubsub: PubSub) -> AsyncIterator[SessionEvent]:
    async for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        user, _, kind = message["data"].decode().partition(" ")
        try:
            yield SessionEvent(UUID(user), restricted=kind == _RESTRICTED.strip())
        except ValueError:
            continue  # not ours; nothing to close
