"""A wall clock that stands still, for tests of what happens "in the same instant"."""

from __future__ import annotations

import time

import pytest


@pytest.fixture
def one_instant(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything in the test happens in the same millisecond, as ``time.time`` tells it.

    A revocation by time (a token's ``iat`` against the time of the change) cannot
    tell a token issued then from one issued before; one by session and generation can.
    PyJWT judges ``exp`` by ``datetime``, and asyncio by the monotonic clock: both go on.
    """
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
