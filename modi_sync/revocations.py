"""The state of each session (user generation, family revoked), read from Redis once
and then kept in memory.

Every authenticated request and sync connection checks it, so reading Redis each
time would cost a round trip per open. An entry is dropped when the user's sessions
end (this instance drops the user's entries at once; the others on the sessions-ended
channel), and expires after ``max_age`` seconds anyway: Redis pub/sub delivers at most
once, so an instance that missed the message accepts a revoked token for at most that
long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

from storage.outage import is_outage
from storage.refresh_tokens import SessionState

from .errors import Unavailable

_PRUNE_AT = 4096  # entries; past this, expired ones are dropped

Session = tuple[UUID, str]  # (user id, family)


class SessionStates:
    def __init__(self, read: Callable[[UUID, str], Awaitable[SessionState]],
                 max_age: float = 2.0) -> None:
        self._read = read
        self._max_age = max_age
        self._known: dict[Session, tuple[float, SessionState]] = {}  # -> (read at, state)
        self._reading: dict[Session, asyncio.Future[SessionState]] = {}

    async def state(self, user_id: UUID, family: str) -> SessionState:
        session = (user_id, family)
        known = self._known.get(session)
        if known is not None and time.monotonic() - known[0] < self._max_age:
            return known[1]
        reading = self._reading.get(session)
        if reading is None:  # concurrent callers share one read
            reading = asyncio.ensure_future(self._read_and_keep(session))
            self._reading[session] = reading
        try:
            return await asyncio.shield(reading)
        except Exception as exc:
            if is_outage(exc):
                # Fail closed: a session whose revocation cannot be read is not let in.
                raise Unavailable("cannot check the session now, try again") from exc
            raise

    def forget(self, user_id: UUID) -> None:
        """The user's sessions ended: the next check of any of them reads Redis again.

        A scan of at most a few thousand entries, on a logout or a password change.
        """
        for table in (self._known, self._reading):
            for session in [s for s in table if s[0] == user_id]:
                # A read under way may predate the revocation: it is not kept.
                del table[session]

    async def _read_and_keep(self, session: Session) -> SessionState:
        started = time.monotonic()
        me = asyncio.current_task()
        try:
            value = await self._read(*session)
        finally:
            still_current = self._reading.get(session) is me
            if still_current:
                del self._reading[session]
        if still_current:  # not forgotten meanwhile
            if len(self._known) >= _PRUNE_AT:
                self._prune()
            self._known[session] = (started, value)
        return value

    def _prune(self) -> None:
        oldest = time.monotonic() - self._max_age
        self._known = {k: v for k, v in self._known.items() if v[0] >= oldest}
