"""``/api/v1/users/me``: the caller's profile, consents and audit log (docs/api.md,
"GDPR")."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
