"""For tests of hostile clients: how long the event loop was held, and a guard against
a loop held so long that the test would hang.

The in-process test server shares the test's event loop, so a frame that holds the
server's loop holds the test's too: ``LagMonitor`` sees it from inside.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .conftest import Client


class LoopBlocked(Exception):
    """Raised by ``LagMonitor``'s guard in whatever code held the event loop."""


class LagMonitor:
    """The longest the event loop was held by one piece of work, while in ``async with``.

    A task sleeps ``tick`` and measures how late it woke. What counts is capped by the
    CPU time the loop's thread spent meanwhile: work that holds the loop spends CPU,
    while a process the (shared) machine did not schedule for a while spends none and
    is no fault of the server's.

    The heap that exists when the monitor starts is frozen (``gc.freeze``) until it
    stops, as the server's collector does with what survives (modi_sync/collector.py):
    with CPython's stock policy, a pass over pytest's and hypothesis's objects held the
    loop for 100 ms now and then, whatever the frame.

    A loop held for ``interrupt_after`` seconds may be held for minutes (pycrdt's
    var-uint reader is quadratic in the length of a 0xff run), and no asyncio timeout
    can fire meanwhile. A guard thread then raises ``LoopBlocked`` in the main thread,
    by a signal whose handler Python runs between two bytecodes of the code holding the
    loop: that code fails, the loop goes on, and the test reports the lag it saw
    instead of hanging. Code that holds the loop inside one C call is out of its reach.
    """

    def __init__(self, tick: float = 0.005, interrupt_after: float = 2.0) -> None:
        self.tick = tick
        self.interrupt_after = interrupt_after
        self.worst = 0.0  # seconds
        self.interrupted = False
        self._woke = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._guard: threading.Thread | None = None
        self._previous_handler: signal.Handlers | None = None

    async def __aenter__(self) -> LagMonitor:
        self._previous_handler = signal.signal(signal.SIGUSR1, self._interrupt)
        gc.freeze()
        self._woke = time.monotonic()
        self._task = asyncio.create_task(self._watch())
        self._guard = threading.Thread(target=self._guard_loop, args=(threading.get_ident(),),
                                       name="lag-monitor-guard", daemon=True)
        self._guard.start()
        await asyncio.sleep(0)  # the watch task runs from here on
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        assert self._guard is not None and self._task is not None
        self._guard.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        gc.unfreeze()
        signal.signal(signal.SIGUSR1, self._previous_handler)

    async def _watch(self) -> None:
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.tick)
            late = time.perf_counter() - wall - self.tick
            busy = time.thread_time() - cpu
            self.worst = max(self.worst, min(late, busy))
            self._woke = time.monotonic()

    def _guard_loop(self, main_thread: int) -> None:
        while not self._stop.wait(0.05):
            if not self.interrupted and time.monotonic() - self._woke > self.interrupt_after:
                self.interrupted = True
                signal.pthread_kill(main_thread, signal.SIGUSR1)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        raise LoopBlocked(f"the event loop was held for over {self.interrupt_after} s")

    def report(self) -> str:
        held = f"the event loop was held for {self.worst * 1000:.0f} ms"
        return held + (" (then interrupted: it would have gone on)" if self.interrupted else "")


async def silent_socket(client: Client,
                        path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket handshake, then a client that reads no more (and may write raw frames)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port, limit=1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    assert b"101" in await reader.readline()
    return reader, writer
