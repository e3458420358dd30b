"""Giving freed memory back to the system: that of rooms that left, and of compactions.

A room's document lives in yrs, allocated with glibc's ``malloc``; a compaction reads and
merges a document's rows. When rooms leave memory or a compaction ends their bytes are
freed, but glibc keeps the freed pages for later allocations:
after 10,000 documents were opened and left idle, the server's RSS stayed at 2.2x its
baseline, with no Python object left holding anything (bench/README.md, "Reliability").
``malloc_trim(0)`` returns those pages. It runs in a thread (glibc locks its own arenas,
so the event loop goes on allocating meanwhile), ``delay`` seconds after memory was freed (so
one trim serves a whole wave of rooms leaving) and at most once every ``every``
seconds. During a 30-minute soak a trim gave back 77 MB that glibc held while the rooms
were still in memory (bench/README.md, "Reliability"). Where there is no glibc, nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS)
        return None
    return trim


MALLOC_TRIM = _find_malloc_trim()


class MemoryReturn:
    def __init__(self, delay: float = 2.0, every: float = 10.0,
                 trim: Callable[[int], int] | None = MALLOC_TRIM) -> None:
        self._delay = delay
        self._every = every
        self._trim = trim
        self._due: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # monotonic time of the last trim

    def freed(self) -> None:
        """Rooms left memory or a compaction ended: give the pages back soon."""
        if self._trim is None or self._due is not None:
            return
        now = time.monotonic()
        wait = max(self._delay, self._last + self._every - now)
        self._due = asyncio.get_running_loop().call_later(wait, self._start)

    def stop(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    def _start(self) -> None:
        self._due = None
        self._last = time.monotonic()
        asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        assert self._trim is not None
        try:
            await asyncio.to_thread(self._trim, 0)
        except Exception as exc:  # memory returned late is no reason to fail anything
            log.warning("returning freed memory failed: %r", exc)
