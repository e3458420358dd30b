"""The Redis channel that tells every instance a user's sessions ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

CHANNEL = "modi:sessions-ended"


async def publish_session_ended(redis: Redis, user_id: UUID) -> None:
    await redis.publish(CHANNEL, str(user_id))


async def subscribe_sessions_ended(redis: Redis) -> PubSub:
    """Subscribed on return, so nothing published afterwards is missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    return pubsub


async def ended_user_ids(pubsub: PubSub) -> AsyncIterator[UUID]:
    async for message in pubsub.listen():
        if message.get("type") != "message":
            continue
        try:
            yield UUID(message["data"].decode())
        except ValueError:
            continue  # not ours; nothing to close
