"""Close a user's sync connections, on every instance, when their session ends.

Logout, a password change and account deletion publish the user id on a Redis
channel; every instance listens and closes that user's sockets with 4401.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from storage.session_events import ended_user_ids, subscribe_sessions_ended

from .registry import RoomRegistry

log = logging.getLogger(__name__)


class SessionCloser:
    def __init__(self, redis: Redis, registry: RoomRegistry) -> None:
        self._redis = redis
        self._registry = registry
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pubsub = await subscribe_sessions_ended(self._redis)
        self._task = asyncio.create_task(self._run(pubsub), name="session-closer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, pubsub) -> None:  # noqa: ANN001 - redis PubSub
        try:
            while True:
                try:
                    async for user_id in ended_user_ids(pubsub):
                        closed = self._registry.close_user(user_id)
                        log.info("session ended: closed %d sync connections", closed)
                except (RedisError, OSError) as exc:
                    log.warning("session channel lost (%s); resubscribing", exc)
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(RedisError, OSError):
                        await pubsub.aclose()
                        pubsub = await subscribe_sessions_ended(self._redis)
        finally:
            await pubsub.aclose()
