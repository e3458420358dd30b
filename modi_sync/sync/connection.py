"""One client's websocket: its identity, its outgoing frames, its awareness ids.

Fan-out is the hot path: one update goes to every other client of a document. The
room frames a message once (``frame``) and every connection takes the same bytes, with
no task and no copy per peer. Server frames are not masked, and compression is off for
sync sockets, so one frame fits every peer; aiohttp's own ``send_bytes`` would build
the frame again for each of them.

Frames queued during one turn of the event loop leave in one write at its end (a
group commit hands a room many updates at once): one system call per peer and turn,
not per message.

Every byte waiting for a peer counts against ``max_queue_bytes``: the frames queued
for the end of the turn and what the transport holds that the peer has not read yet.
A peer past it has stopped reading: it is dropped, not buffered without end. A reply
to a sync step 1 (a whole document, perhaps) is written at once and the connection
reads nothing more until the transport has taken it (``send_reply``), so a client that
asks again and again without reading has at most one reply in flight. A peer that
went silent is found by the keep-alive sweep (keepalive.py), which reads and sets
``heard`` and ``pinged``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from uuid import UUID, uuid4

from aiohttp import WSCloseCode, web

from storage.rate_limits import Limit

from ..metrics import CLIENTS_DROPPED

log = logging.getLogger(__name__)


_FIN_BINARY = 0x82
_PING = b"\x89\x00"  # a final ping frame without payload
SHARES = Limit(10, 1)  # awareness updates a connection may send other instances, per s


def frame(message: bytes) -> bytes:
    """An unmasked, final, binary websocket frame holding ``message`` (RFC 6455 5.2)."""
    size = len(message)
    if size < 126:
        header = struct.pack("!BB", _FIN_BINARY, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN_BINARY, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN_BINARY, 127, size)
    return header + message


class MessageBudget:
    """A token bucket: ``limit.requests`` messages at once, then that many per
    ``limit.window_seconds``."""

    __slots__ = ("_burst", "_rate", "_tokens", "_at")

    def __init__(self, limit: Limit) -> None:
        self._burst = float(limit.requests)
        self._rate = limit.requests / limit.window_seconds
        self._tokens = self._burst
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Connection:
    __slots__ = ("id", "ws", "user_id", "awareness", "heard", "pinged", "budget", "shares",
                 "share_due", "_transport", "_max_queue_bytes", "_closing", "_out", "_queued")

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        user_id: UUID,
        max_queue_bytes: int,
        message_limit: Limit,
    ) -> None:
        self.id = uuid4().hex[:12]  # names it in the logs (modi_sync/logs.py)
        self.ws = ws
        self.user_id = user_id
        self.awareness: dict[int, int] = {}  # awareness client it speaks for -> state bytes
        self.heard = True  # something arrived since the last keep-alive sweep
        self.pinged = False  # the last sweep sent a ping
        self.budget = MessageBudget(message_limit)
        # Its awareness updates sent to the other instances: a cursor moving sends many,
        # the bus carries at most SHARES of them, then the latest state once due.
        self.shares = MessageBudget(SHARES)
        self.share_due = False  # its latest state is to be shared when the budget allows
        self._transport = request.transport
        self._max_queue_bytes = max_queue_bytes
        self._closing: asyncio.Task[bool] | None = None
        self._out: list[bytes] | None = None  # frames waiting for the end of this turn
        self._queued = 0  # their bytes

    @property
    def waiting_bytes(self) -> int:
        """What this peer has not read yet: queued for the end of the turn, and held by
        the transport."""
        transport = self._transport
        held = transport.get_write_buffer_size() if transport is not None else 0
        return self._queued + held

    @property
    def closing(self) -> bool:
        return self._closing is not None or self.ws.closed

    def send(self, message: bytes) -> None:
        self.send_frame(frame(message))

    def send_frame(self, data: bytes) -> None:
        transport = self._transport
        if self.closing or transport is None:
            return
        self._queued += len(data)
        if self._over_budget(self._queued):
            self._out, self._queued = None, 0
            return
        if self._out is None:
            self._out = [data]
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._out.append(data)

    def flush(self) -> None:
        """Write the frames queued so far; it runs by itself at the end of the turn."""
        out, self._out, self._queued = self._out, None, 0
        transport = self._transport
        if not out or transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    async def send_reply(self, message: bytes) -> None:
        """Send ``message`` after what is queued; return once the transport has room
        again. The caller reads nothing more meanwhile: at most one reply in flight.

        aiohttp's own writer does the waiting: the sync socket is made with a writer
        limit of 0, so each of its frames waits while the transport is over its high
        mark (the peer is not reading).
        """
        self.flush()  # what was queued before goes first
        transport = self._transport
        if self.closing or transport is None:
            return
        if self._over_budget(len(message)):
            return
        with contextlib.suppress(ConnectionError):  # it went away; the receive loop ends
            await self.ws.send_bytes(message)

    def _over_budget(self, more: int) -> bool:
        """Whether ``more`` bytes and what the transport holds pass the budget; if so the
        peer is not reading, so it would not read a close frame either: it is dropped."""
        assert self._transport is not None
        waiting = more + self._transport.get_write_buffer_size()
        if waiting <= self._max_queue_bytes:
            return False
        CLIENTS_DROPPED.inc()
        self.abort(f"it stopped reading ({waiting} bytes waiting)")
        return True

    def ping(self) -> None:
        self.send_frame(_PING)

    def abort(self, why: str) -> None:
        """Drop the TCP connection at once: the peer is gone or will not read."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            log.info("dropping a client: %s", why)
            transport.abort()

    def close(self, code: int, reason: str = "") -> None:
        """Start closing with ``code``; safe to call from synchronous code, once counts."""
        if self._closing is None and not self.ws.closed:
            self.flush()  # what was sent before the close goes before the close frame
            self._closing = asyncio.ensure_future(
                self.ws.close(code=code, message=reason.encode()[:120]))

    async def finish(self) -> None:
        """Close the socket (1000 unless a reason was given) and wait until it is closed."""
        self.close(WSCloseCode.OK)
        if self._closing is not None:
            try:
                await self._closing
            except (ConnectionError, RuntimeError) as exc:
                log.debug("closing a socket failed: %s", exc)
