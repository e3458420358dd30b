"""``GET /sync/{name}``: the y-websocket endpoint.

Authentication happens before the upgrade (401 in the error envelope). After it the
protocol is y-websocket's, unchanged: the server sends sync step 1 and the awareness
states it knows, answers step 1 with step 2, and treats step 2 and update messages as
updates (apply, store, then fan out).
"""

from __future__ import annotations

import logging

from aiohttp import WSCloseCode, WSMsgType, web
from pycrdt import YMessageType, YSyncMessageType

from ..access import authenticate
from ..keys import REGISTRY, SETTINGS, WRITER
from .connection import Connection
from .protocol import MESSAGE_QUERY_AWARENESS, ProtocolError, parse_message
from .registry import TooManyConnections
from .room import DocumentTooLarge, DocumentUnavailable, InvalidUpdate, Room
from .writer import WriteFailed

log = logging.getLogger(__name__)

DOC_NAME = r"[A-Za-z0-9._-]{1,64}"


async def sync_endpoint(request: web.Request) -> web.StreamResponse:
    claims = await authenticate(request, allow_query_token=True)  # 401 before any upgrade
    settings = request.app[SETTINGS]
    registry = request.app[REGISTRY]
    name = request.match_info["name"]

    # No compression: every peer of a room is sent the same frame (see connection.py).
    # No heartbeat and no autoping: the keep-alive sweep (keepalive.py) pings silent
    # peers, and this loop answers pings and notes every frame, pongs included.
    ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes, autoping=False,
                               compress=False)
    await ws.prepare(request)
    conn = Connection(request, ws, claims.user_id, settings.max_send_queue_bytes)
    try:
        room = await registry.join((claims.user_id, name), conn)
    except TooManyConnections:
        conn.close(WSCloseCode.POLICY_VIOLATION, "too many connections")
        await conn.finish()
        return ws
    except Exception:
        log.exception("loading document %s failed", name)
        conn.close(WSCloseCode.INTERNAL_ERROR, "document unavailable")
        await conn.finish()
        return ws

    try:
        room.greet(conn)
        await _receive_loop(request, conn, room)
    finally:
        registry.leave(room, conn)
        await conn.finish()
    return ws


async def _receive_loop(request: web.Request, conn: Connection, room: Room) -> None:
    writer = request.app[WRITER]
    async for msg in conn.ws:
        conn.heard = True
        if conn.closing:
            return
        if msg.type is WSMsgType.PING:
            await conn.ws.pong(msg.data)
            continue
        if msg.type is WSMsgType.PONG:
            continue
        if msg.type is not WSMsgType.BINARY:
            if msg.type is WSMsgType.TEXT:
                conn.close(WSCloseCode.UNSUPPORTED_DATA, "binary frames only")
            return  # ERROR (e.g. a frame over the size limit): aiohttp closed it already
        try:
            message = parse_message(msg.data)
            if message.type == YMessageType.SYNC:
                if message.sync_type == YSyncMessageType.SYNC_STEP1:
                    reply, ticket = room.sync_step2(message.payload)
                    # The reply may hold updates still on their way to storage: it
                    # leaves only once they are stored.
                    await writer.wait_committed(ticket)
                    conn.send(reply)
                else:
                    room.apply_update(message.payload, conn)
            elif message.type == YMessageType.AWARENESS:
                room.apply_awareness(conn, message.payload, msg.data)
            elif message.type == MESSAGE_QUERY_AWARENESS:
                awareness = room.awareness_message()
                if awareness is not None:
                    conn.send(awareness)
        except (ProtocolError, InvalidUpdate) as exc:
            log.info("closing a connection that sent an invalid message: %s", exc)
            conn.close(WSCloseCode.UNSUPPORTED_DATA, "invalid message")
            return
        except DocumentTooLarge:
            conn.close(WSCloseCode.MESSAGE_TOO_BIG, "document size limit reached")
            return
        except (WriteFailed, DocumentUnavailable):
            return  # the room closed every connection already
