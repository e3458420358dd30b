"""The cyclic garbage collector, run for a server that holds thousands of sockets.

CPython's collector is generational: it expects most objects to die young, and scans an
object again each time it moves to an older generation. A sync server breaks that
expectation. Every open websocket keeps about 75 tracked objects alive for as long as it
stays open (aiohttp's request, protocol, parser, reader, writer, two tasks and their
coroutines; the connection and its room), and the sync path makes no cyclic garbage at
all. With the stock policy each of those objects was scanned at least twice on its way
to the oldest generation, and a middle-generation pass over all of them stopped the
event loop for hundreds of milliseconds at a time (docs/performance.md, "The garbage
collector").

Here young collections run as before and find the short-lived cycles (an exception and
its traceback, say). What survives one is frozen (``gc.freeze``): out of the collector's
sight, still freed by reference counting the moment nothing refers to it. An object that
was alive at a young collection and joins a garbage cycle later is found by a full
collection of everything, every ``full_every`` seconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# Net new tracked objects between young collections (CPython's default is 700). Larger
# passes are rarer, and in-flight request objects are scanned fewer times, while a pass
# stays at a few milliseconds.
YOUNG_THRESHOLD = 20_000


class CycleCollector:
    """Young collections, survivors frozen, a full collection every ``full_every`` s."""

    def __init__(self, full_every: float) -> None:
        self._full_every = full_every
        self._timer: asyncio.TimerHandle | None = None
        self._saved_threshold: tuple[int, int, int] | None = None

    def start(self) -> None:
        """Take over the collector; call from the event loop that runs the server."""
        self._saved_threshold = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, *self._saved_threshold[1:])
        gc.callbacks.append(self._after_collection)
        gc.freeze()  # what start-up made lives as long as the process
        self._schedule()

    def stop(self) -> None:
        """Give the collector back as it was, every frozen object included."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        gc.unfreeze()
        if self._saved_threshold is not None:
            gc.set_threshold(*self._saved_threshold)
            self._saved_threshold = None

    def collect_all(self) -> int:
        """A full collection of every object, frozen ones included; how many it found."""
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        return found

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            gc.freeze()

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._full_every, self._full)

    def _full(self) -> None:
        started = time.perf_counter()
        found = self.collect_all()
        log.debug("full collection: %d unreachable objects, %.0f ms, %d objects kept",
                  found, 1000 * (time.perf_counter() - started), gc.get_freeze_count())
        self._schedule()


def cycle_collection(full_every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` running a CycleCollector for the application's life."""

    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        collector = CycleCollector(full_every)
        collector.start()
        try:
            yield
        finally:
            collector.stop()

    return ctx
