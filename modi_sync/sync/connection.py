"""One client's websocket: its identity, its bounded send queue, its awareness ids."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from uuid import UUID

from aiohttp import WSCloseCode, web

log = logging.getLogger(__name__)

# Closes are counted from here so every reason has one name.
CLOSE_SESSION_ENDED = 4401


class Connection:
    """Fan-out appends to a queue; one long-lived task per connection writes it out.

    ``send`` never blocks the sender of an update on a slow peer. A peer whose queue
    passes ``max_queue_bytes`` has stopped reading and is dropped instead of buffered.
    """

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        user_id: UUID,
        max_queue_bytes: int,
    ) -> None:
        self.ws = ws
        self._transport = request.transport
        self.user_id = user_id
        self.awareness_ids: set[int] = set()
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._max_queue_bytes = max_queue_bytes
        self._wakeup = asyncio.Event()
        self._close_code: int | None = None
        self._close_reason = b""
        self._task: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self._close_code is not None or self.ws.closed

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop())

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > self._max_queue_bytes:
            # It is not reading, so it would not read a close frame either: drop it.
            log.warning("dropping a client that stopped reading (%d bytes queued)",
                        self._queued_bytes)
            self._close_code = WSCloseCode.ABNORMAL_CLOSURE
            self._queue.clear()
            if self._transport is not None:
                self._transport.abort()
            self._wakeup.set()
            return
        self._wakeup.set()

    def close(self, code: int, reason: str = "") -> None:
        """Close after what is already queued; safe to call from synchronous code."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason.encode()[:120]
            self._wakeup.set()

    async def finish(self) -> None:
        """Stop the writer and close the socket (code 1000 unless a reason was given)."""
        self.close(WSCloseCode.OK)
        if self._task is not None:
            await self._task

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queue and not ws.closed:
                    data = self._queue.popleft()
                    self._queued_bytes -= len(data)
                    await ws.send_bytes(data)
                if self._close_code is not None:
                    break
        except (ConnectionError, RuntimeError) as exc:
            log.debug("send failed: %s", exc)
        finally:
            self._queue.clear()
            if not ws.closed:
                await ws.close(code=self._close_code or WSCloseCode.OK, message=self._close_reason)
