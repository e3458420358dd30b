"""Each user's access-revocation time, read from Redis once and then kept in memory.

Every authenticated request and sync connection checks it, so reading Redis each
time would cost a round trip per open. An entry is dropped when the user's sessions
end (this instance drops it at once; the others on the sessions-ended channel), and
expires after ``max_age`` seconds anyway: Redis pub/sub delivers at most once, so an
instance that missed the message accepts an old token for at most that long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

_PRUNE_AT = 4096  # entries; past this, expired ones are dropped


class RevocationTimes:
    def __init__(self, read: Callable[[UUID], Awaitable[int]], max_age: float = 2.0) -> None:
        self._read = read
        self._max_age = max_age
        self._known: dict[UUID, tuple[float, int]] = {}  # user -> (read at, revoked before)
        self._reading: dict[UUID, asyncio.Future[int]] = {}

    async def revoked_before(self, user_id: UUID) -> int:
        """Unix seconds: the user's access tokens issued earlier are refused."""
        known = self._known.get(user_id)
        if known is not None and time.monotonic() - known[0] < self._max_age:
            return known[1]
        reading = self._reading.get(user_id)
        if reading is None:  # concurrent callers share one read
            reading = asyncio.ensure_future(self._read_and_keep(user_id))
            self._reading[user_id] = reading
        return await asyncio.shield(reading)

    def forget(self, user_id: UUID) -> None:
        """The user's sessions ended: the next check reads Redis again."""
        self._known.pop(user_id, None)
        self._reading.pop(user_id, None)  # a read under way may predate the revocation

    async def _read_and_keep(self, user_id: UUID) -> int:
        started = time.monotonic()
        me = asyncio.current_task()
        try:
            value = await self._read(user_id)
        finally:
            still_current = self._reading.get(user_id) is me
            if still_current:
                del self._reading[user_id]
        if still_current:  # not forgotten meanwhile
            if len(self._known) >= _PRUNE_AT:
                self._prune()
            self._known[user_id] = (started, value)
        return value

    def _prune(self) -> None:
        oldest = time.monotonic() - self._max_age
        self._known = {k: v for k, v in self._known.items() if v[0] >= oldest}
