"""``/api/v1/auth``: accounts and token pairs (contract section 3)."""

from __future__ import annotations

from aiohttp import web

from storage.users import EmailTaken, User

from ..keys import ACCESS_TOKENS, REFRESH_TOKENS, USERS
from ..passwords import hash_password, verify_password
from .errors import ApiError, json_response
from .validation import email_field, json_body, password_field

routes = web.RouteTableDef()


async def token_pair(app: web.Application, user: User) -> dict:
    access = app[ACCESS_TOKENS]
    return {
        "user": {
            "id": str(user.id),
            "email": user.email,
            "role": user.role,
            "created_at": user.created_at.isoformat(),
        },
        "access_token": access.issue(user.id, user.email, user.role),
        "refresh_token": await app[REFRESH_TOKENS].issue(user.id),
        "token_type": "Bearer",
        "expires_in": access.ttl_seconds,
    }


@routes.post("/api/v1/auth/register")
async def register(request: web.Request) -> web.Response:
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
    body = await json_body(request)
    email = email_field(body)
    password = password_field(body)
    user = await request.app[USERS].by_email(email)
    # Unknown email and wrong password take the same path and give the same answer.
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        raise ApiError.unauthorized("wrong email or password")
    return json_response(await token_pair(request.app, user))
