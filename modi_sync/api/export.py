"""``GET /api/v1/users/me/export``: everything held about the caller, streamed
(docs/api.md, "GDPR")."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
