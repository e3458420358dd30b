"""``/api/v1/docs``: the caller's documents over HTTP (contract section 4).

Reads and writes go through the same room as websocket clients: a POSTed update is
applied, stored and fanned out exactly like one from a socket, and nothing is
answered before what it shows is stored.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from aiohttp import web
from pycrdt import Map

from storage.doc_events import publish_deleted

from ..access import authenticated_user
from ..contract import DOC_NAME, DOCUMENT_ROOTS
from ..keys import REDIS, REGISTRY, SETTINGS, UPDATE_LOG, WRITER
from ..sync.quota import QuotaExceeded
from ..sync.registry import DocumentNotFound
from ..sync.room import (
    DocumentTooLarge,
    DocumentUnavailable,
    InvalidUpdate,
    Room,
    UpdatesDoNotIntegrate,
)
from ..sync.writer import WriteFailed
from ..tokens import AccessClaims
from .errors import ApiError, json_response

routes = web.RouteTableDef()
CLAIMS = web.RequestKey("claims", AccessClaims)

_DOC = "/api/v1/docs/{name:" + DOC_NAME + "}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _from_b64url(field: str, text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ApiError.validation(field, "not base64url") from None


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError.validation(name, "must be an integer") from None
    if not low <= value <= high:
        raise ApiError.validation(name, f"must be {low}..{high}")
    return value


async def _room(request: web.Request, *, create: bool = False) -> Room:
    """The caller's document named in the path; only ever one of the caller's own."""
    claims = request.get(CLAIMS) or await authenticated_user(request)
    registry = request.app[REGISTRY]
    try:
        room = await registry.get((claims.user_id, request.match_info["name"]), create=create)
    except DocumentNotFound:
        raise ApiError(404, "no such document") from None
    registry.touch(room)
    try:
        room.build()  # here, so that a document whose storage is broken is a 503
    except DocumentUnavailable:
        raise ApiError(503, "document unavailable, try again") from None
    return room


async def _stored(request: web.Request, ticket: int) -> None:
    """Answer only with what is stored: wait for the writer to reach ``ticket``."""
    try:
        await request.app[WRITER].wait_committed(ticket)
    except WriteFailed:
        raise ApiError(503, "storage unavailable, try again") from None


def document_json(room: Room) -> dict[str, Any]:
    """The document schema's roots as JSON; other roots are left out."""
    return {name: room.doc.get(name, type=Map).to_py() or {} for name in DOCUMENT_ROOTS}


@routes.get("/api/v1/docs")
async def list_documents(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    page = _int_param(request, "page", 1, 1, 1_000_000)
    limit = _int_param(request, "limit", 20, 1, 100)
    docs, total = await request.app[UPDATE_LOG].list_documents(
        claims.user_id, limit, (page - 1) * limit)
    body = {
        "data": [
            {"name": d.name, "size_bytes": d.size_bytes, "updates": d.updates,
             "updated_at": d.updated_at.isoformat()}
            for d in docs
        ],
        "pagination": {"page": page, "limit": limit, "total": total,
                       "total_pages": math.ceil(total / limit)},
    }
    return web.json_response(body)


@routes.get(_DOC)
async def get_document(request: web.Request) -> web.Response:
    room = await _room(request)
    content, ticket = document_json(room), room.last_ticket
    await _stored(request, ticket)
    return json_response(content)


@routes.get(_DOC + "/update")
async def get_update(request: web.Request) -> web.Response:
    room = await _room(request)
    state_vector = b"\x00"
    if "state_vector" in request.query:
        state_vector = _from_b64url("state_vector", request.query["state_vector"])
    try:
        update, ticket = room.update_since(state_vector)
    except InvalidUpdate:
        raise ApiError.validation("state_vector", "not a Yjs state vector") from None
    await _stored(request, ticket)
    return web.Response(body=update, content_type="application/octet-stream")


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, however it arrives (Content-Length or chunked, fast or slowly),
    or a 413 as soon as it passes ``limit``: never more than that and one chunk held."""
    too_large = ApiError(413, f"an update is at most {limit} bytes")
    if (request.content_length or 0) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@routes.post(_DOC + "/update")
async def post_update(request: web.Request) -> web.Response:
    request[CLAIMS] = await authenticated_user(request)  # before reading any body
    if request.content_type != "application/octet-stream":
        raise ApiError(415, "expected application/octet-stream")
    update = await _read_body(request, request.app[SETTINGS].max_frame_bytes)
    room = await _room(request, create=True)
    try:
        ticket = room.apply_update(update, origin=None)
    except InvalidUpdate:
        raise ApiError.validation("body", "not a valid Yjs v1 update") from None
    except DocumentTooLarge:
        raise ApiError(413, "the document has reached its size limit") from None
    except QuotaExceeded as exc:
        raise ApiError(413, f"storage quota reached: {exc}") from None
    except UpdatesDoNotIntegrate:
        raise ApiError.validation(
            "body", "builds on content the document does not have, past the limit") from None
    if ticket is not None:
        await _stored(request, ticket)
    return json_response({"state_vector": b64url(room.doc.get_state())})


@routes.delete(_DOC)
async def delete_document(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    key = (claims.user_id, request.match_info["name"])
    if await request.app[UPDATE_LOG].delete_document(*key) is None:
        raise ApiError(404, "no such document")
    request.app[REGISTRY].drop_document(key)
    await publish_deleted(request.app[REDIS], request.app[REGISTRY].instance, key)
    return web.Response(status=204)
