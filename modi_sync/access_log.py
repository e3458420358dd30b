"""The server's access log: one line per request, and never a token.

A sync request carries its access token in the query (``/sync/NAME?token=...``), so a
line names the path without its query; it names no header either (``Authorization``).
With the log off, ``serve`` gives aiohttp no logger, and a request costs nothing here.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .access import client_ip
from .app_keys import REQUEST_ID
from .config import Settings

ACCESS_LOG = logging.getLogger("modi_sync.access")


def access_logger(settings: Settings) -> logging.Logger | None:
    """The access log's logger, or None when ``MODI_ACCESS_LOG`` turns it off."""
    if settings.access_log == "auto":
        return ACCESS_LOG if settings.log_format == "json" else None
    return ACCESS_LOG if settings.access_log == "on" else None


class AccessLog(AbstractAccessLogger):
    """aiohttp's ``access_log_class``: a line through ``logging``, its parts as JSON
    fields as well (modi_sync/logs.py)."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        try:
            fields = {
                "method": request.method,
                "path": request.rel_url.raw_path,  # without the query
                "status": response.status,
                "bytes": response.body_length,
                "duration_ms": round(time * 1000, 1),
                "client": client_ip(request) if isinstance(request, web.Request)
                else request.remote,
            }
            request_id = response.headers.get("X-Request-ID") or request.get(REQUEST_ID)
            self.logger.info("%s %s %d %d B %.1f ms client=%s request_id=%s",
                             *fields.values(), request_id,
                             extra={"request_id": request_id, "fields": fields})
        except Exception:
            self.logger.exception("access log line failed")
