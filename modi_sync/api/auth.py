"""``/api/v1/auth``: accounts, token pairs, sessions (contract section 3)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from storage.session_events import publish_session_ended
from storage.users import EmailTaken, User

from ..access import authenticated_user, client_ip, enforce_rate_limit
from ..keys import ACCESS_TOKENS, REDIS, REFRESH_TOKENS, REGISTRY, REVOCATIONS, SETTINGS, USERS
from ..passwords import hash_password, verify_password
from .errors import ApiError, json_response
from .validation import email_field, json_body, password_field, string_field

routes = web.RouteTableDef()


async def token_pair(app: web.Application, user: User, family: str | None = None) -> dict:
    access = app[ACCESS_TOKENS]
    return {
        "user": user_json(user),
        "access_token": access.issue(user.id, user.email, user.role),
        "refresh_token": await app[REFRESH_TOKENS].issue(user.id, family),
        "token_type": "Bearer",
        "expires_in": access.ttl_seconds,
    }


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "role": user.role,
        "created_at": user.created_at.isoformat(),
    }


async def _limit_by_ip(request: web.Request) -> None:
    await enforce_rate_limit(request, "auth", client_ip(request),
                             request.app[SETTINGS].rate_limit_auth)


async def _end_sessions(request: web.Request, user_id) -> None:  # noqa: ANN001 - UUID
    """Close the user's sync sockets here at once, and on every other instance."""
    request.app[REVOCATIONS].forget(user_id)
    request.app[REGISTRY].close_user(user_id)
    await publish_session_ended(request.app[REDIS], user_id)


@routes.post("/api/v1/auth/register")
async def register(request: web.Request) -> web.Response:
    await _limit_by_ip(request)
    body = await json_body(request)
    email = email_field(body)
    password = password_field(body)
    try:
        user = await request.app[USERS].create(email, await hash_password(password))
    except EmailTaken:
        raise ApiError.conflict("an account with this email exists") from None
    return json_response(await token_pair(request.app, user), status=201)


@routes.post("/api/v1/auth/login")
async def login(request: web.Request) -> web.Response:
    await _limit_by_ip(request)
    body = await json_body(request)
    email = email_field(body)
    password = password_field(body)
    user = await request.app[USERS].by_email(email)
    # Unknown email and wrong password take the same path and give the same answer.
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        raise ApiError.unauthorized("wrong email or password")
    return json_response(await token_pair(request.app, user))


@routes.post("/api/v1/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    await _limit_by_ip(request)
    token = string_field(await json_body(request), "refresh_token", max_len=512)
    result = await request.app[REFRESH_TOKENS].use(token)
    user = await request.app[USERS].by_id(result.user_id) if result.status == "ok" else None
    if user is None:
        # Unknown, expired, revoked, or reused (which has just revoked its family).
        raise ApiError.unauthorized("invalid refresh token")
    return json_response(await token_pair(request.app, user, result.family))


@routes.post("/api/v1/auth/logout")
async def logout(request: web.Request) -> web.Response:
    await _limit_by_ip(request)
    token = string_field(await json_body(request), "refresh_token", max_len=512)
    tokens = request.app[REFRESH_TOKENS]
    found = await tokens.family_of(token)
    if found is None:
        raise ApiError.unauthorized("invalid refresh token")
    user_id, family = found
    await tokens.revoke_family(family)
    await _end_sessions(request, user_id)
    return web.Response(status=204)


@routes.post("/api/v1/auth/password")
async def change_password(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    body = await json_body(request)
    current = password_field(body, "current_password")
    new = password_field(body, "new_password")
    users = request.app[USERS]
    user = await users.by_id(claims.user_id)
    if user is None or not await verify_password(user.password_hash, current):
        raise ApiError.unauthorized("wrong password")
    await users.set_password_hash(user.id, await hash_password(new))
    await request.app[REFRESH_TOKENS].revoke_user(user.id)
    await _end_sessions(request, user.id)
    # Every earlier token is refused now; this device continues with a fresh pair.
    return json_response(await token_pair(request.app, user))


@routes.delete("/api/v1/auth/account")
async def delete_account(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    password = password_field(await json_body(request))
    users = request.app[USERS]
    user = await users.by_id(claims.user_id)
    if user is None or not await verify_password(user.password_hash, password):
        raise ApiError.unauthorized("wrong password")
    await request.app[REFRESH_TOKENS].forget_user(user.id)
    await _end_sessions(request, user.id)
    await users.delete(user.id)
    return web.Response(status=204)
