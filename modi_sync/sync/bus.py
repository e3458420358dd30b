"""Sending stored updates to the other instances, without ever holding up storage.

The writer hands each committed batch to ``publish`` and goes on with the next batch;
one task sends what accumulated, pipelined, to the Redis channel. A Redis that hangs
or is down only delays (and past ``max_pending`` drops, with a warning) these messages:
storing and local fan-out go on, and other instances' clients get the updates from
storage on their next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque

from redis.asyncio import Redis

from storage.doc_events import DocKey, publish_updates

log = logging.getLogger(__name__)


class UpdatePublisher:
    def __init__(self, redis: Redis, instance: uuid.UUID, max_pending: int = 100_000) -> None:
        self._redis = redis
        self._instance = instance
        self._pending: deque[tuple[DocKey, bytes]] = deque()
        self._max_pending = max_pending
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def publish(self, updates: list[tuple[DocKey, bytes]]) -> None:
        self._pending.extend(updates)
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._pending.popleft()
            log.warning("Redis is not keeping up: %d updates not sent to other instances",
                        overflow)
        self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="update-publisher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(len(self._pending), 1000))]
                try:
                    await publish_updates(self._redis, self._instance, batch)
                except Exception as exc:
                    log.warning("publishing %d updates to other instances failed: %s",
                                len(batch), exc)
