"""``/api/v1/docs``: the caller's documents over HTTP (docs/api.md, "Documents").

Every route goes through the documents service (modi_sync/documents.py): a POSTed
update is applied, stored and fanned out exactly like one from a socket, and nothing
is answered before what it shows is stored. A route only ever names a document of the
caller's own: the service is asked with the caller's user id.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from ..access import actor, authenticated_user
from ..app_keys import DOCUMENTS, SETTINGS, STORAGE
from ..contract import DOC_NAME
from .errors import ApiError, json_response
from .validation import page_params, paginated_response

routes = web.RouteTableDef()

_DOC = "/api/v1/docs/{name:" + DOC_NAME + "}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _from_b64url(field: str, text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ApiError.validation(field, "not base64url") from None


@routes.get("/api/v1/docs")
async def list_documents(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    page = page_params(request)
    docs, total = await request.app[DOCUMENTS].page(claims.user_id, page.limit, page.offset)
    return paginated_response([
        {"name": d.name, "size_bytes": d.size_bytes, "updates": d.updates,
         "updated_at": d.updated_at.isoformat()}
        for d in docs
    ], page, total)


@routes.get(_DOC)
async def get_document(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    return json_response(await request.app[DOCUMENTS].json(claims.user_id, _name(request)))


@routes.get(_DOC + "/update")
async def get_update(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    state_vector = b"\x00"
    if "state_vector" in request.query:
        state_vector = _from_b64url("state_vector", request.query["state_vector"])
    update = await request.app[DOCUMENTS].update_since(claims.user_id, _name(request),
                                                       state_vector)
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
    claims = await authenticated_user(request, writes=True)  # before reading any body
    if request.content_type != "application/octet-stream":
        raise ApiError(415, "expected application/octet-stream")
    update = await _read_body(request, request.app[SETTINGS].max_frame_bytes)
    state_vector = await request.app[DOCUMENTS].apply(claims.user_id, _name(request), update,
                                                      field="body")
    return json_response({"state_vector": b64url(state_vector)})


@routes.delete(_DOC)
async def delete_document(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    name = _name(request)
    await request.app[DOCUMENTS].delete(claims.user_id, name)
    await request.app[STORAGE].audit.append(actor(request).entry(
        "document.deleted", "document", user_id=claims.user_id, resource_id=name))
    return web.Response(status=204)


def _name(request: web.Request) -> str:
    return request.match_info["name"]
