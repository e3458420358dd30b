"""A small y-websocket client on pycrdt, for tests: a real Doc over a real websocket.

It speaks the protocol the way y-websocket's WebsocketProvider does: answer the
server's step 1, send its own step 1, send local changes as updates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from pycrdt import (
    Awareness,
    Doc,
    Map,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
)

from modi_sync.sync.protocol import parse_message

_REMOTE = object()  # transaction origin of what came from the server


class YClient:
    def __init__(self, session: aiohttp.ClientSession, url: str, doc: Doc | None = None) -> None:
        self.session = session
        self.url = url
        self.doc = doc or Doc()
        self.awareness = Awareness(self.doc)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.synced = asyncio.Event()
        self.close_code: int | None = None
        self.received_updates = 0
        self._task: asyncio.Task[None] | None = None
        self._sub = self.doc.observe(self._local_change)

    # -- lifecycle ----------------------------------------------------------------------

    async def connect(self) -> YClient:
        self.synced.clear()
        self.close_code = None
        self.ws = await self.session.ws_connect(self.url)
        await self.ws.send_bytes(create_sync_message(self.doc))
        self._task = asyncio.create_task(self._read_loop())
        return self

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            await self._task
        self.ws = None

    async def wait_synced(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        if self._task is not None:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.close_code

    # -- the protocol -------------------------------------------------------------------

    def _local_change(self, event: Any) -> None:
        if event.transaction.origin is _REMOTE or self.ws is None or self.ws.closed:
            return
        update = create_update_message(event.update)
        asyncio.get_running_loop().create_task(self._send(update))

    async def _send(self, data: bytes) -> None:
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_bytes(data)

    async def send_raw(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(data)

    async def send_awareness(self, state: dict[str, Any] | None) -> None:
        self.awareness.set_local_state(state)
        payload = self.awareness.encode_awareness_update([self.awareness.client_id])
        await self.send_raw(create_awareness_message(payload))

    async def _read_loop(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                break
            message = parse_message(msg.data)
            if message.type == YMessageType.SYNC:
                with self.doc.transaction(origin=_REMOTE):
                    reply = handle_sync_message(msg.data[1:], self.doc)
                if reply is not None:
                    await self._send(reply)
                if message.sync_type == YSyncMessageType.SYNC_STEP2:
                    self.synced.set()
                elif message.sync_type == YSyncMessageType.SYNC_UPDATE:
                    self.received_updates += 1
            elif message.type == YMessageType.AWARENESS:
                self.awareness.apply_awareness_update(message.payload, _REMOTE)
        self.close_code = self.ws.close_code

    # -- convenience for the Magni schema ----------------------------------------------

    def workouts(self) -> Map:
        return self.doc.get("workouts", type=Map)

    def weights(self) -> Map:
        return self.doc.get("weights", type=Map)


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
) -> None:
    """Wait until ``predicate`` holds, polling the event loop; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout:.1f} s")
        await asyncio.sleep(0.01)


async def stays_false(predicate: Callable[[], bool], seconds: float = 0.3) -> bool:
    """For what must NOT happen: True if ``predicate`` stayed false for ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if predicate():
            return False
        await asyncio.sleep(0.01)
    return not predicate()
