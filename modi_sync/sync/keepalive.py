"""Finding peers that went away without a word: one sweep over every connection.

A phone that loses its network (a tunnel, a flight) leaves its TCP connection open on
the server until something is sent and times out. aiohttp's own heartbeat finds such
peers with a timer per socket and a callback for every chunk received, a cost that
showed in every websocket open (docs/performance.md, "Figures behind the code").
Here one timer sweeps all connections every ``interval`` seconds: a connection heard from
since the last sweep is fine; a silent one is sent a ping; one still silent at the sweep
after its ping is dropped. A dead peer is dropped two to three intervals after it last
spoke; a live one costs an attribute store per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from .connection import Connection


class KeepAlive:
    def __init__(self, connections: Callable[[], Iterable[Connection]], interval: float) -> None:
        self._connections = connections
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        for conn in list(self._connections()):
            if conn.heard:
                conn.heard = conn.pinged = False
            elif conn.pinged:
                conn.abort("no answer to a ping")
            else:
                conn.ping()
                conn.pinged = True
        self.start()
