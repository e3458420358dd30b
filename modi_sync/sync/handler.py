"""``GET /sync/{name}``: the y-websocket endpoint.

Authentication happens before the upgrade (401 in the error envelope). After it the
protocol is y-websocket's, unchanged: the server sends sync step 1 and the awareness
states it knows, answers step 1 with step 2, and treats step 2 and update messages as
updates (apply, store, then fan out).

One client must not hold the event loop or the server's memory: each message is
decoded with bounds (protocol.py) before a room sees it, the loop serves others once a
connection's messages took a millisecond, a connection may send only so many messages
(``MessageBudget``), and it reads nothing more while its last reply to a step 1 waits
for it to read.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web
from pycrdt import YMessageType, YSyncMessageType

from storage.rate_limits import Limit

from ..access import authenticate
from ..app_keys import ENGINE, REGISTRY, SETTINGS, WRITER
from ..contract import CloseCode
from ..logs import bind_connection
from ..metrics import RATE_LIMITED
from .connection import Connection
from .protocol import MESSAGE_QUERY_AWARENESS, ProtocolError, parse_message
from .quota import QuotaExceeded
from .registry import RoomRegistry, TooManyConnections
from .room import (
    AwarenessTooLarge,
    DocumentTooLarge,
    DocumentUnavailable,
    InvalidUpdate,
    Room,
    RoomKey,
    TooManyAwarenessClients,
    UpdatesDoNotIntegrate,
)
from .writer import GroupCommitWriter, WriteFailed

log = logging.getLogger(__name__)

# After a frame over the size limit: how long the socket keeps reading (and dropping)
# what the peer still sends, so that the close frame reaches it (see SyncWebSocket).
OVERSIZE_LINGER_SECONDS = 2.0

# Seconds of one connection's messages after which the loop serves others once.
YIELD_AFTER = 0.001

# How long a socket waits for its place under the per-user limit before it is let in
# with each instance's own limit alone (Redis slow or away).
LEASE_SECONDS = 1.0

SYNC_ROUTE = "/sync/{name}"  # the route's template, as the HTTP metrics name it

# What closes a connection, and how: (close code, reason).
_CLOSES: dict[type[Exception], tuple[int, str]] = {
    ProtocolError: (CloseCode.INVALID_MESSAGE, "invalid message"),
    InvalidUpdate: (CloseCode.INVALID_MESSAGE, "invalid message"),
    DocumentTooLarge: (CloseCode.TOO_BIG, "document size limit reached"),
    QuotaExceeded: (CloseCode.TOO_BIG, "storage quota reached"),
    AwarenessTooLarge: (CloseCode.TOO_BIG, "awareness state too large"),
    TooManyAwarenessClients: (CloseCode.POLICY, "too many awareness clients"),
    UpdatesDoNotIntegrate: (CloseCode.POLICY, "updates do not integrate"),
}
_CLOSING = tuple(_CLOSES)


class SyncWebSocket(web.WebSocketResponse):
    """aiohttp's websocket, except after a frame over the size limit.

    aiohttp answers such a frame with a 1009 close frame and closes the socket at
    once, while the peer is still sending the rest of the frame. Closing a socket with
    unread input makes the kernel send a reset, and the peer's kernel may then drop
    the close frame unread: the client sees 1006, not 1009. Here the socket stays open
    a little longer (``linger``), aiohttp reading and dropping what arrives, so the
    close frame is read first. This overrides aiohttp's ``_close_transport``, a private
    hook: tests/test_hostile_sync.py checks the 1009 arrives.
    """

    oversized = False  # a frame over the size limit arrived

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"",
                    drain: bool = True) -> bool:
        if code == CloseCode.TOO_BIG:
            self.oversized = True
        return await super().close(code=code, message=message, drain=drain)

    def _close_transport(self) -> None:
        if not self.oversized:
            super()._close_transport()

    async def linger(self, request: web.Request) -> None:
        """Keep reading (and dropping) for a moment, then close the socket."""
        transport = request.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + OVERSIZE_LINGER_SECONDS
        # Polled: aiohttp offers no event for the peer's close here.
        while transport is not None and not transport.is_closing() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.oversized = False
        self._close_transport()


async def sync_endpoint(request: web.Request) -> web.StreamResponse:
    # 401 (403 after a withdrawn consent) before any upgrade.
    claims = await authenticate(request, allow_query_token=True, writes=True)
    settings = request.app[SETTINGS]
    registry = request.app[REGISTRY]
    name = request.match_info["name"]

    # No compression: every peer of a room is sent the same frame (see connection.py).
    # No heartbeat and no autoping: the keep-alive sweep (keepalive.py) pings silent
    # peers, and this loop answers pings and notes every frame, pongs included.
    # Writer limit 0: every frame aiohttp writes (replies to step 1) waits while the
    # peer is not reading (Connection.send_reply).
    # aiohttp refuses a frame of max_msg_size bytes already: the limit is what may pass.
    ws = SyncWebSocket(max_msg_size=settings.max_frame_bytes + 1, autoping=False,
                       compress=False, writer_limit=0)
    await ws.prepare(request)
    conn = Connection(request, ws, claims.user_id, settings.max_send_queue_bytes,
                      Limit.parse(settings.ws_message_limit))
    bind_connection(f"{claims.user_id}/{name}", conn.id)  # on every line of this task
    leases = request.app[ENGINE].leases
    try:
        placed = await asyncio.wait_for(leases.take(claims.user_id, conn.id), LEASE_SECONDS)
    except Exception as exc:  # Redis away: each instance's own limit still holds
        log.warning("the connection limit across instances is not checked: %r", exc)
        placed = None
    try:
        if placed is False:  # the user's sockets on every instance are at the limit
            conn.close(CloseCode.POLICY, "too many connections")
        else:
            await _serve(request, conn, registry, (claims.user_id, name))
    finally:
        if placed:  # before the close handshake: a reconnect at once finds its place
            try:
                await leases.give_back(claims.user_id, conn.id)
            except Exception as exc:  # its lease ends by itself
                log.info("giving back a connection lease failed: %r", exc)
        await conn.finish()
    if ws.oversized:
        await ws.linger(request)
    return ws


async def _serve(request: web.Request, conn: Connection, registry: RoomRegistry,
                 key: RoomKey) -> None:
    """Join the document's room and take the connection's messages until it closes."""
    try:
        room = await registry.join(key, conn)
    except TooManyConnections:
        conn.close(CloseCode.POLICY, "too many connections")
        return
    except Exception:
        log.exception("loading document %s failed", key[1])
        conn.close(CloseCode.INTERNAL_ERROR, "document unavailable")
        return
    try:
        room.greet(conn)
        await _receive_loop(request, conn, room)
    finally:
        registry.leave(room, conn)


async def _receive_loop(request: web.Request, conn: Connection, room: Room) -> None:
    writer = request.app[WRITER]
    busy = 0.0  # seconds spent on this connection's messages since the loop last had a turn
    async for msg in conn.ws:
        conn.heard = True
        if conn.closing:
            return
        if not conn.budget.take():
            log.info("closing a connection that sent too many messages")
            RATE_LIMITED.labels(SYNC_ROUTE).inc()
            conn.close(CloseCode.TRY_AGAIN_LATER, "too many messages")
            return
        if msg.type is WSMsgType.PING:
            await conn.ws.pong(msg.data)
            continue
        if msg.type is WSMsgType.PONG:
            continue
        if msg.type is not WSMsgType.BINARY:
            if msg.type is WSMsgType.TEXT:
                conn.close(CloseCode.INVALID_MESSAGE, "binary frames only")
            return  # ERROR (e.g. a frame over the size limit): aiohttp closed it already
        started = time.perf_counter()
        try:
            await _handle(msg.data, conn, room, writer)
        except _CLOSING as exc:
            code, reason = _CLOSES[type(exc)]
            log.info("closing a connection: %s (%s)", reason, exc)
            conn.close(code, reason)
            return
        except (WriteFailed, DocumentUnavailable):
            return  # the room closed every connection already
        except Exception:
            # Logged here: once the peer has gone the handler is cancelled, and an
            # exception left to propagate would be replaced and never seen.
            log.exception("handling a sync message failed")
            conn.close(CloseCode.INTERNAL_ERROR, "internal error")
            return
        # A burst of buffered messages (aiohttp parses a whole read at once) would be
        # handled without a pause: the others get a turn once a millisecond of it is
        # spent (a turn after every message cost W1 dearly: docs/performance.md).
        busy += time.perf_counter() - started
        if busy > YIELD_AFTER:
            busy = 0.0
            await asyncio.sleep(0)


async def _handle(data: bytes, conn: Connection, room: Room, writer: GroupCommitWriter) -> None:
    message = parse_message(data)
    if message.type == YMessageType.SYNC:
        if message.sync_type == YSyncMessageType.SYNC_STEP1:
            reply, ticket = room.sync_step2(message.payload)
            # The reply may hold updates still on their way to storage: it leaves only
            # once they are stored.
            await writer.wait_committed(ticket)
            await conn.send_reply(reply)
        else:
            room.apply_update(message.payload, conn)
    elif message.type == YMessageType.AWARENESS:
        room.apply_awareness(conn, message.payload, data)
    elif message.type == MESSAGE_QUERY_AWARENESS:
        awareness = room.awareness_message()
        if awareness is not None:
            conn.send(awareness)
