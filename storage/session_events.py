"""The Redis channel that tells every instance a user's sessions ended, or that the
user withdrew (or gave again) consent to processing: each instance reads the user's
sessions' state again, and closes their sockets unless consent was given again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

CHANNEL = "modi:sessions-ended"

ENDED = "ended"  # logout, password change, erasure
RESTRICTED = "restricted"  # consent withdrawn: the tokens live on, for reading
RESTORED = "restored"  # consent given again
_KINDS = (ENDED, RESTRICTED, RESTORED)


@dataclass(frozen=True, slots=True)
class SessionEvent:
    user_id: UUID
    kind: str = ENDED


async def publish_session_event(redis: Redis, event: SessionEvent) -> None:
    await redis.publish(CHANNEL, f"{event.user_id} {event.kind}")


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
            user_id = UUID(user)
        except ValueError:
            continue  # not ours; nothing to close
        yield SessionEvent(user_id, kind if kind in _KINDS else ENDED)
