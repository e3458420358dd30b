"""A long-lived Redis subscription that hands each message to a callback.

Two channels use it: the end of a user's sessions (close their sockets with 4401) and
document changes made by other instances or commands (apply and fan out). A
subscription lost and back, whether redis-py's retries renewed it or this listener did
after an error, is reported to ``resubscribed``: what was published meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Seconds between tries to subscribe again after a loss: the first, and the most.
RETRY_FIRST = 0.1
RETRY_MOST = 2.0


class _Connection(Protocol):
    """What is used of a subscription's connection (redis-py leaves these untyped)."""

    def register_connect_callback(self, callback: Callable[[Any], Awaitable[None]]) -> None:
        ...

    def deregister_connect_callback(self, callback: Callable[[Any], Awaitable[None]]) -> None:
        ...


def _connection(pubsub: PubSub) -> _Connection | None:
    # redis-py sets PubSub.connection to None without a type: mypy takes it for None.
    return cast("_Connection | None", pubsub.connection)


class RedisListener:
    def __init__(
        self,
        redis: Redis,
        subscribe: Callable[[Redis], Awaitable[PubSub]],
        read: Callable[[PubSub], AsyncIterator[Any]],
        handle: Callable[[Any], None],
        name: str,
        resubscribed: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._subscribe = subscribe
        self._read = read
        self._handle = handle
        self._name = name
        self._resubscribed = resubscribed  # called after a lost subscription is back
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribed on return: nothing published afterwards is missed."""
        pubsub = await self._subscribe(self._redis)
        self._watch(pubsub)
        self._task = asyncio.create_task(self._run(pubsub), name=self._name)

    def _watch(self, pubsub: PubSub) -> None:
        # redis-py reconnects a dropped subscription by itself (its retries) and
        # subscribes again, silently; what was published meanwhile is lost all the same.
        connection = _connection(pubsub)
        if self._resubscribed is not None and connection is not None:
            connection.register_connect_callback(self._reconnected)

    async def _reconnected(self, connection: Any) -> None:  # a method: redis-py keeps it weakly
        assert self._resubscribed is not None
        log.warning("%s: subscription lost and renewed", self._name)
        self._resubscribed()

    async def _close(self, pubsub: PubSub) -> None:
        connection = _connection(pubsub)
        if connection is not None:  # it goes back to the pool: no callback of ours
            connection.deregister_connect_callback(self._reconnected)
        await pubsub.aclose()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, pubsub: PubSub) -> None:
        try:
            while True:
                try:
                    async for item in self._read(pubsub):
                        try:
                            self._handle(item)
                        except Exception:
                            log.exception("%s: handling a message failed", self._name)
                    # A closed subscription ends its messages without an error: going
                    # round again at once would spin, holding the event loop for good.
                    log.warning("%s: subscription ended; resubscribing", self._name)
                except (RedisError, OSError) as exc:
                    log.warning("%s: subscription lost (%s); resubscribing", self._name, exc)
                pubsub = await self._resubscribe(pubsub)
        finally:
            await self._close(pubsub)

    async def _resubscribe(self, lost: PubSub) -> PubSub:
        """A new subscription, once Redis answers again; tried every few seconds at most."""
        with contextlib.suppress(RedisError, OSError):
            await self._close(lost)
        delay = RETRY_FIRST
        while True:
            await asyncio.sleep(delay)  # a backoff, not a wait for a condition
            delay = min(delay * 2, RETRY_MOST)
            try:
                # A ping first: a subscribe that fails keeps its connection out of the
                # pool (the half-made subscription is never handed back to be closed),
                # and one per try would drain the pool that every request shares.
                await self._redis.ping()
                pubsub = await self._subscribe(self._redis)
            except (RedisError, OSError):
                continue
            self._watch(pubsub)
            log.warning("%s: subscribed again", self._name)
            if self._resubscribed is not None:
                self._resubscribed()
            return pubsub
