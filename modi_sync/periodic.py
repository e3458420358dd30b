"""Background rounds a server runs on a schedule (retention, the popular list's pass),
each on every instance, the first one an interval after start-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0  # a round under way at shutdown may finish for this long


@contextlib.asynccontextmanager
async def periodic(name: str, interval: float,
                   one_round: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """``one_round`` every ``interval`` seconds while the block runs (never with 0). A
    round that fails is logged and the next one runs as planned."""
    if interval <= 0:
        yield
        return
    stopping = asyncio.Event()
    task = asyncio.create_task(_every(name, interval, one_round, stopping), name=name)
    try:
        yield
    finally:
        stopping.set()
        try:
            await asyncio.wait_for(task, STOP_GRACE_SECONDS)
        except TimeoutError:
            log.warning("%s cancelled at shutdown, after %.0f s", name, STOP_GRACE_SECONDS)


async def _every(name: str, interval: float, one_round: Callable[[], Awaitable[None]],
                 stopping: asyncio.Event) -> None:
    while not await _stopped_within(stopping, interval):
        try:
            await one_round()
        except Exception:
            log.exception("%s failed", name)


async def _stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True
