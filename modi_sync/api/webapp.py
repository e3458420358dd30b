"""The web client at ``/app/``: the files ``web/build.mjs`` wrote, served as they are.

No Node at run time: the install step built them into ``modi_sync/webapp_dist``
(docs/webapp.md). They are read into memory once, with their gzip, on the first
request. A content-hashed name (``app.<16 hex>.js``) is cached for a year as immutable;
the page and the service worker are revalidated every time (``no-cache`` with an ETag),
so a new build reaches browsers at once. Every route answers ``HEAD`` (aiohttp adds it
to each ``GET``).
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from .errors import ApiError

DIST = Path(__file__).resolve().parent.parent / "webapp_dist"
FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
HASHED = re.compile(r"[a-z0-9-]+\.[0-9a-f]{16}\.[a-z0-9]+")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".webmanifest": "application/manifest+json",
}
# The page runs only its own script and style; it talks to this server alone (REST and
# the sync websocket: CSP 3's 'self' covers ws: and wss: of the same host).
PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str
    cache_control: str


class WebApp:
    """The built client in ``dist``; not built, every route answers 404 saying so."""

    def __init__(self, dist: Path = DIST) -> None:
        self.dist = dist
        self._files: dict[str, StaticFile] | None = None

    def files(self) -> dict[str, StaticFile]:
        if self._files is None:
            if not (self.dist / "index.html").is_file():
                raise ApiError(404, "the web client is not built in this installation "
                                    "(docs/webapp.md)")
            self._files = {path.name: _load(path) for path in sorted(self.dist.iterdir())
                           if path.is_file() and path.suffix in TYPES}
        return self._files

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect("/app/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._answer(request, "index.html")

    async def file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name == "index.html":  # one address for the page: /app/
            raise web.HTTPPermanentRedirect("/app/")
        return self._answer(request, name)

    def _answer(self, request: web.Request, name: str) -> web.StreamResponse:
        found = self.files().get(name)
        if found is None:
            raise ApiError(404, "not found")
        gzip_ok = found.gzipped is not None and _accepts_gzip(request)
        etag = found.etag + ("-gz" if gzip_ok else "")
        headers = {"Cache-Control": found.cache_control, "ETag": f'"{etag}"',
                   "Vary": "Accept-Encoding"}
        if name == "index.html":
            headers["Content-Security-Policy"] = PAGE_POLICY
            headers["Referrer-Policy"] = "no-referrer"
        if _matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = found.content_type
        if gzip_ok:
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=found.gzipped, headers=headers)
        return web.Response(body=found.body, headers=headers)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/app", self.redirect)
        app.router.add_get("/app/", self.page)
        app.router.add_get("/app/{file:" + FILE_NAME + "}", self.file)


def add_routes(app: web.Application) -> None:
    """The web client's routes, serving ``DIST``."""
    WebApp().add_routes(app)


def _load(path: Path) -> StaticFile:
    body = path.read_bytes()
    packed = gzip.compress(body, 9, mtime=0)
    cache = IMMUTABLE if HASHED.fullmatch(path.name) else REVALIDATE
    return StaticFile(body, packed if len(packed) < len(body) else None, TYPES[path.suffix],
                      hashlib.sha256(body).hexdigest()[:32], cache)


def _accepts_gzip(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or f'"{etag}"' in tags
