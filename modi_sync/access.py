"""Who is calling: the bearer token of a request, verified."""

from __future__ import annotations

from aiohttp import web

from .api.errors import ApiError
from .keys import ACCESS_TOKENS
from .tokens import AccessClaims, InvalidToken


def authenticate(request: web.Request, *, allow_query_token: bool = False) -> AccessClaims:
    """The verified claims of the caller's access token, or a 401.

    Browsers cannot set headers on a websocket upgrade, so the sync endpoint also
    takes the token as ``?token=``.
    """
    token = None
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
    elif allow_query_token:
        token = request.query.get("token")
    if not token:
        raise ApiError.unauthorized("missing access token")
    try:
        return request.app[ACCESS_TOKENS].verify(token)
    except InvalidToken:
        raise ApiError.unauthorized("invalid or expired access token") from None
