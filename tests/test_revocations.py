"""The in-memory revocation times: one read per user, dropped when sessions end."""

from __future__ import annotations

import asyncio
import uuid

from modi_sync.revocations import RevocationTimes


class Source:
    """What Redis would say; counts the reads and can hold one open."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def read(self, user_id: uuid.UUID) -> int:
        self.reads += 1
        self.started.set()
        value = self.value
        if self.gate is not None:
            await self.gate.wait()
        return value


async def test_concurrent_checks_share_one_read_and_later_ones_none():
    source, user = Source(), uuid.uuid4()
    times = RevocationTimes(source.read)
    source.value = 100
    assert await asyncio.gather(*(times.revoked_before(user) for _ in range(50))) == [100] * 50
    assert await times.revoked_before(user) == 100
    assert source.reads == 1


async def test_forget_makes_the_next_check_read_again():
    source, user = Source(), uuid.uuid4()
    times = RevocationTimes(source.read)
    assert await times.revoked_before(user) == 0
    source.value = 200  # the password changed
    times.forget(user)
    assert await times.revoked_before(user) == 200


async def test_a_read_that_started_before_a_revocation_is_not_kept():
    source, user = Source(), uuid.uuid4()
    times = RevocationTimes(source.read)
    source.gate = asyncio.Event()
    early = asyncio.ensure_future(times.revoked_before(user))
    await source.started.wait()  # the read is under way, with the old value
    source.value = 300
    times.forget(user)
    source.gate.set()
    assert await early == 0  # its caller was concurrent with the revocation
    assert await times.revoked_before(user) == 300


async def test_entries_expire():
    source, user = Source(), uuid.uuid4()
    times = RevocationTimes(source.read, max_age=0.0)
    await times.revoked_before(user)
    source.value = 400  # a sessions-ended message this instance never got
    assert await times.revoked_before(user) == 400
