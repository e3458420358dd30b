"""The in-memory session states: one read per session, dropped when sessions end."""

from __future__ import annotations

import asyncio
import uuid

from modi_sync.app_keys import REFRESH_TOKENS
from modi_sync.revocations import SessionStates
from storage.refresh_tokens import RefreshTokens, SessionState


class Source:
    """What Redis would say; counts the reads and can hold one open."""

    def __init__(self) -> None:
        self.value = SessionState(generation=0, revoked=False)
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def read(self, user_id: uuid.UUID, family: str) -> SessionState:
        self.reads += 1
        self.started.set()
        value = self.value
        if self.gate is not None:
            await self.gate.wait()
        return value


LIVE = SessionState(generation=0, revoked=False)
LOGGED_OUT = SessionState(generation=0, revoked=True)
CHANGED = SessionState(generation=1, revoked=False)


async def test_concurrent_checks_share_one_read_and_later_ones_none():
    source, user = Source(), uuid.uuid4()
    states = SessionStates(source.read)
    results = await asyncio.gather(*(states.state(user, "s1") for _ in range(50)))
    assert results == [LIVE] * 50
    assert await states.state(user, "s1") == LIVE
    assert source.reads == 1
    await states.state(user, "s2")  # another session of the user: its own read
    assert source.reads == 2


async def test_forget_drops_every_session_of_the_user_and_only_theirs():
    source, user, other = Source(), uuid.uuid4(), uuid.uuid4()
    states = SessionStates(source.read)
    for who, session in ((user, "a"), (user, "b"), (other, "c")):
        await states.state(who, session)
    source.value = LOGGED_OUT
    states.forget(user)
    assert await states.state(user, "a") == LOGGED_OUT
    assert await states.state(user, "b") == LOGGED_OUT
    assert await states.state(other, "c") == LIVE  # still the remembered state
    assert source.reads == 5


async def test_a_read_that_started_before_a_revocation_is_not_kept():
    source, user = Source(), uuid.uuid4()
    states = SessionStates(source.read)
    source.gate = asyncio.Event()
    early = asyncio.ensure_future(states.state(user, "s"))
    await source.started.wait()  # the read is under way, with the old value
    source.value = CHANGED
    states.forget(user)
    source.gate.set()
    assert await early == LIVE  # its caller was concurrent with the revocation
    assert await states.state(user, "s") == CHANGED


async def test_entries_expire():
    source, user = Source(), uuid.uuid4()
    states = SessionStates(source.read, max_age=0.0)
    await states.state(user, "s")
    source.value = CHANGED  # a sessions-ended message this instance never got
    assert await states.state(user, "s") == CHANGED


async def test_the_state_read_from_redis(client):
    """One MGET says it all: the generation (a number, or None once deleted), and
    whether the family was revoked."""
    tokens: RefreshTokens = client.server.app[REFRESH_TOKENS]
    user, family = uuid.uuid4(), uuid.uuid4().hex
    assert await tokens.session_state(user, family) == SessionState(0, False)
    assert await tokens.revoke_user(user) == 1
    await tokens.revoke_family(family)
    assert await tokens.session_state(user, family) == SessionState(1, True)
    await tokens.forget_user(user)
    assert await tokens.session_state(user, uuid.uuid4().hex) == SessionState(None, False)
    assert await tokens.revoke_user(user) is None  # nothing left to bump
