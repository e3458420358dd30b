"""``/api/v1/auth``: accounts, token pairs, sessions (docs/api.md, "Authentication and
accounts")."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from aiohttp import web

from storage.consents import DOCUMENTS as CONSENT_DOCUMENTS
from storage.login_failures import subject
from storage.refresh_tokens import AccountErased, new_family
from storage.users import User

from ..access import (
    actor,
    address_bucket,
    authenticated_user,
    begin_password_check,
    client_ip,
    enforce_rate_limit,
)
from ..app_keys import (
    ACCESS_TOKENS,
    ACCOUNTS,
    DEVICE_TOKENS,
    LOGIN_FAILURES,
    REFRESH_TOKENS,
    SETTINGS,
    STORAGE,
    USERS,
)
from ..passwords import hash_password, verify_password
from .errors import ApiError, json_response, outage_unavailable
from .validation import (
    consent_version_field,
    email_field,
    json_body,
    optional_string_field,
    password_field,
    string_field,
)

routes = web.RouteTableDef()


async def token_pair(app: web.Application, user: User, generation: int,
                     family: str | None = None) -> dict[str, Any]:
    """A pair of one session (a new one unless ``family``), under ``generation``.

    The generation is the one the caller checked (the refreshed token's, or the one
    a password change set), never re-read here: a pair issued while the password
    changes is then already refused, instead of outliving the change.
    """
    family = family or new_family()
    access = app[ACCESS_TOKENS]
    try:
        refresh_token = await app[REFRESH_TOKENS].issue(user.id, generation, family)
    except AccountErased:  # erased while this request ran
        raise ApiError.unauthorized("invalid credentials") from None
    return {
        "user": user_json(user),
        "access_token": access.issue(user.id, user.email, user.role, session=family,
                                     generation=generation),
        "refresh_token": refresh_token,
        "token_type": "Bearer",
        "expires_in": access.ttl_seconds,
        "device_token": app[DEVICE_TOKENS].issue(user.id),
    }


async def _new_session(app: web.Application, user: User) -> dict[str, Any]:
    generation = await app[REFRESH_TOKENS].generation(user.id)
    if generation is None:  # deleted while this request ran
        raise ApiError.unauthorized("wrong email or password")
    return await token_pair(app, user, generation)


def token_response(pair: dict[str, Any], status: int = 200) -> web.Response:
    response = json_response(pair, status=status)
    response.headers["Cache-Control"] = "no-store"  # no cache or proxy keeps the tokens
    return response


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "email": user.email,
        "role": user.role,
        "created_at": user.created_at.isoformat(),
    }


async def _limit_by_address(request: web.Request, scope: str, spec: str) -> None:
    await enforce_rate_limit(request, scope, address_bucket(client_ip(request)), spec)


def _login_subject(app: web.Application, email: str, user: User | None,
                   device_token: str | None) -> str:
    """Whose wrong passwords this attempt counts with.

    A device that signed in to this account before counts on its own, so a guesser
    who pushes the account into backoff does not lock the owner out. Otherwise the
    account: its id, so no spelling of the email starts a fresh count; an email with
    no account counts too, so a 429 does not tell whether it has one.
    """
    if (user is not None and device_token is not None
            and app[DEVICE_TOKENS].holder(device_token) == user.id):
        return subject("device", device_token)
    return subject("login", str(user.id) if user is not None else email.lower())


@routes.post("/api/v1/auth/register")
@outage_unavailable
async def register(request: web.Request) -> web.Response:
    await _limit_by_address(request, "auth", request.app[SETTINGS].rate_limit_auth)
    body = await json_body(request)
    email = email_field(body)
    password = password_field(body)
    accepted = [(document, version) for document in CONSENT_DOCUMENTS
                if (version := consent_version_field(body, document)) is not None]
    user = await request.app[ACCOUNTS].create(email, password, accepted=accepted,
                                              actor=actor(request))
    return token_response(await _new_session(request.app, user), status=201)


@routes.post("/api/v1/auth/login")
@outage_unavailable
async def login(request: web.Request) -> web.Response:
    await _limit_by_address(request, "auth", request.app[SETTINGS].rate_limit_auth)
    body = await json_body(request)
    email = email_field(body)
    password = password_field(body)
    device_token = optional_string_field(body, "device_token", max_len=512)
    user = await request.app[USERS].by_email(email)
    counted = _login_subject(request.app, email, user, device_token)
    await begin_password_check(request, counted)
    # Unknown email and wrong password take the same path and give the same answer.
    ok = await verify_password(user.password_hash if user else None, password)
    audit = request.app[STORAGE].audit
    if user is None or not ok:
        # The email only when it names no account: the user id says who, otherwise.
        await audit.append(actor(request).entry(
            "auth.login_failed", "session", user_id=user.id if user else None,
            email=None if user else email))
        raise ApiError.unauthorized("wrong email or password")
    await request.app[LOGIN_FAILURES].succeeded(counted)
    pair = await _new_session(request.app, user)
    await audit.append(actor(request).entry("auth.login", "session", user_id=user.id))
    return token_response(pair)


@routes.post("/api/v1/auth/refresh")
@outage_unavailable
async def refresh(request: web.Request) -> web.Response:
    await _limit_by_address(request, "refresh", request.app[SETTINGS].rate_limit_refresh)
    token = string_field(await json_body(request), "refresh_token", max_len=512)
    result = await request.app[REFRESH_TOKENS].use(token)
    if result.user_id is None:  # unknown or expired
        raise ApiError.unauthorized("invalid refresh token")
    if result.status == "reused":
        # A stolen token was used by one party and now by another: the script has
        # revoked the family, and its access tokens and sockets end too.
        await request.app[ACCOUNTS].end_sessions(result.user_id)
    user = await request.app[USERS].by_id(result.user_id) if result.status == "ok" else None
    if user is None or result.generation is None:
        # Unknown, expired, revoked, reused, or its user deleted.
        raise ApiError.unauthorized("invalid refresh token")
    return token_response(await token_pair(request.app, user, result.generation, result.family))


@routes.post("/api/v1/auth/logout")
@outage_unavailable
async def logout(request: web.Request) -> web.Response:
    await _limit_by_address(request, "refresh", request.app[SETTINGS].rate_limit_refresh)
    token = string_field(await json_body(request), "refresh_token", max_len=512)
    tokens = request.app[REFRESH_TOKENS]
    found = await tokens.family_of(token)
    if found is None:
        raise ApiError.unauthorized("invalid refresh token")
    user_id, family = found
    await tokens.revoke_family(family)
    await request.app[ACCOUNTS].end_sessions(user_id)
    await request.app[STORAGE].audit.append(
        actor(request).entry("auth.logout", "session", user_id=user_id))
    return web.Response(status=204)


async def check_password(request: web.Request, user_id: UUID, password: str) -> User:
    """The caller's account if ``password`` is its password; counted like a login.

    A stolen access token buys a few guesses, not one per rate-limit slot.
    """
    user = await request.app[USERS].by_id(user_id)
    if user is None:
        raise ApiError.unauthorized("wrong password")
    counted = subject("password", str(user.id))
    await begin_password_check(request, counted)
    if not await verify_password(user.password_hash, password):
        raise ApiError.unauthorized("wrong password")
    await request.app[LOGIN_FAILURES].succeeded(counted)
    return user


@routes.post("/api/v1/auth/password")
@outage_unavailable
async def change_password(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    body = await json_body(request)
    current = password_field(body, "current_password")
    new = password_field(body, "new_password")
    user = await check_password(request, claims.user_id, current)
    await request.app[USERS].set_password_hash(user.id, await hash_password(new))
    generation = await request.app[REFRESH_TOKENS].revoke_user(user.id)
    await request.app[ACCOUNTS].end_sessions(user.id)
    if generation is None:  # the account was deleted meanwhile
        raise ApiError.unauthorized("wrong password")
    await request.app[STORAGE].audit.append(
        actor(request).entry("auth.password_changed", "user", user_id=user.id))
    # Every earlier token is refused now; this device continues with a fresh pair.
    return token_response(await token_pair(request.app, user, generation))


@routes.delete("/api/v1/auth/account")
@outage_unavailable
async def delete_account(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    password = password_field(await json_body(request))
    user = await check_password(request, claims.user_id, password)
    await request.app[ACCOUNTS].delete(user.id, actor(request))
    return web.Response(status=204)
