"""The per-user connection limit across instances: a lease per open socket, in Redis.

``conns:<user>`` is a sorted set of the user's sockets on every instance, each member
``<instance>/<connection>`` scored by when its lease ends (Unix ms). Taking one drops
the ended leases, counts the rest and adds the new one, in one script, so two
instances cannot both take the last place. Each instance renews its own leases every
third of a lease; an instance that dies renews nothing, so its users' places come
free when their leases end (``lease_seconds``): a crash cannot lock a user out for
longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from uuid import UUID

from redis.asyncio import Redis

log = logging.getLogger(__name__)

_PREFIX = "conns:"

# KEYS[1] the user's set. ARGV: now (ms), lease end (ms), limit, member, key TTL (ms).
# Returns 1 if the lease was taken, 0 if the user is at the limit.
_TAKE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def _key(user_id: UUID) -> str:
    return f"{_PREFIX}{user_id}"


async def forget_user(redis: Redis, user_id: UUID) -> None:
    """Drop an erased user's leases (their sockets are closing)."""
    await redis.delete(_key(user_id))


class ConnectionLeases:
    def __init__(self, redis: Redis, instance: uuid.UUID, *, limit: int,
                 lease_seconds: float = 30.0) -> None:
        self._redis = redis
        self._instance = instance
        self._limit = limit
        self._lease_ms = int(lease_seconds * 1000)
        self._take = redis.register_script(_TAKE_SCRIPT)
        self._held: dict[str, UUID] = {}  # member -> user, the leases of this instance
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._renew_forever(), name="connection-leases")

    async def stop(self) -> None:
        """Stop renewing, after the renewal under way (a Redis command is never cut
        short: redis-py cannot always tell a cancelled command's connection apart)."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def take(self, user_id: UUID, connection: str) -> bool:
        """A place for one more socket of the user, on any instance; False at the limit."""
        member = f"{self._instance}/{connection}"
        now = int(time.time() * 1000)
        taken = await self._take(keys=[_key(user_id)], args=[
            now, now + self._lease_ms, self._limit, member, self._lease_ms * 2])
        if taken:
            self._held[member] = user_id
        return bool(taken)

    async def give_back(self, user_id: UUID, connection: str) -> None:
        member = f"{self._instance}/{connection}"
        if self._held.pop(member, None) is not None:
            await self._redis.zrem(_key(user_id), member)

    async def renew(self) -> None:
        """Push the end of every lease of this instance one lease further."""
        if not self._held:
            return
        end = int(time.time() * 1000) + self._lease_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            for member, user_id in list(self._held.items()):
                pipe.zadd(_key(user_id), {member: end}, xx=True)  # an erased user's: gone
                pipe.pexpire(_key(user_id), self._lease_ms * 2)
            await pipe.execute()

    async def _renew_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._lease_ms / 3000)
            if self._stopping.is_set():
                return
            try:
                await self.renew()
            except Exception as exc:  # Redis away: tried again a third of a lease later
                log.warning("renewing the connection leases failed: %s", exc)
