"""``GET /api/v1/users/me/export``: everything held about the caller, streamed
(docs/api.md, "GDPR")."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime

from aiohttp import web

from storage.rate_limits import EXPORT_SCOPE

from ..access import actor, authenticated_user, enforce_rate_limit
from ..app_keys import DOCUMENTS, REQUEST_ID, SETTINGS, STORAGE
from ..export import Exporter

routes = web.RouteTableDef()
log = logging.getLogger(__name__)


# No HEAD: asking for the headers alone would read (and log) the whole export.
@routes.get("/api/v1/users/me/export", allow_head=False)
async def export(request: web.Request) -> web.StreamResponse:
    """A read: allowed while consent to processing is withdrawn (access is a right
    then too). The body is streamed, so an error once it has started cannot become an
    envelope: the connection is cut, and the JSON the client holds is visibly invalid
    (no final chunk of the chunked encoding, no closing brace)."""
    claims = await authenticated_user(request)
    await enforce_rate_limit(request, EXPORT_SCOPE, str(claims.user_id),
                             request.app[SETTINGS].rate_limit_export)
    exporter = Exporter(request.app[STORAGE], request.app[DOCUMENTS])
    chunks = await exporter.open(claims.user_id, actor(request))
    day = datetime.now(UTC).date().isoformat()
    response = web.StreamResponse(headers={
        "Content-Type": "application/json",
        "Content-Disposition": f'attachment; filename="magni-export-{day}.json"',
        "Cache-Control": "no-store",
    })
    async with contextlib.aclosing(chunks):
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except ConnectionError:  # the client went away: nothing left to tell it
            log.info("export of %s: the client left before its end", claims.user_id,
                     extra={"request_id": request[REQUEST_ID]})
            return response
        except Exception:
            log.exception("export of %s failed after it started; connection cut",
                          claims.user_id, extra={"request_id": request[REQUEST_ID]})
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    return response
