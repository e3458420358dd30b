"""``/api/v1/users/me``: the caller's profile, consents and audit log (docs/api.md,
"GDPR"), in the export's shapes (export.py). Erasure is ``DELETE /api/v1/auth/account``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from storage.consents import DOCUMENTS as CONSENT_DOCUMENTS

from ..access import actor, authenticated_user
from ..accounts import Consents
from ..app_keys import ACCOUNTS, STORAGE, USERS
from ..export import audit_json, consent_json, profile_json
from .auth import check_password
from .errors import ApiError, json_response
from .validation import (
    consent_version,
    email_field,
    json_body,
    page_params,
    paginated_response,
    password_field,
)

routes = web.RouteTableDef()

_ME = "/api/v1/users/me"
_PROFILE_FIELDS = {"email", "current_password"}


@routes.get(_ME)
async def get_profile(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    user = await request.app[USERS].by_id(claims.user_id)
    if user is None:
        raise ApiError.unauthorized("invalid or expired access token")
    return json_response(profile_json(user))


@routes.patch(_ME)
async def patch_profile(request: web.Request) -> web.Response:
    """Rectification. The email is the only field of the profile a user sets; changing
    it needs the current password, so a stolen access token cannot take the account."""
    claims = await authenticated_user(request)
    body = await json_body(request)
    unknown = sorted(set(body) - _PROFILE_FIELDS)
    if unknown:
        raise ApiError.validation(unknown[0], "not a field of the profile")
    if "email" not in body:
        raise ApiError.validation("email", "required string")
    email = email_field(body)
    user = await check_password(request, claims.user_id, password_field(body, "current_password"))
    changed = await request.app[ACCOUNTS].change_email(user, email, actor(request))
    return json_response(profile_json(changed))


def _consents_json(consents: Consents) -> dict[str, Any]:
    return {
        **{document: consent_json(consents.current[document])
           if document in consents.current else None for document in CONSENT_DOCUMENTS},
        "processing_restricted": consents.restricted,
        "history": [consent_json(c) for c in consents.history],
        "history_total": consents.total,
    }


@routes.get(_ME + "/consents")
async def get_consents(request: web.Request) -> web.Response:
    """The history is paged like a list (``page``, ``limit``): the current state is
    always whole, and the export has every row."""
    claims = await authenticated_user(request)
    page = page_params(request)
    consents = await request.app[ACCOUNTS].consents(claims.user_id, page.limit, page.offset)
    return json_response(_consents_json(consents))


@routes.put(_ME + "/consents")
async def put_consents(request: web.Request) -> web.Response:
    """``{"privacy_policy_version": V | null, "terms_version": V | null}``: a version
    accepts it, null withdraws; a key left out leaves that document as it is."""
    claims = await authenticated_user(request)
    body = await json_body(request)
    fields = {f"{document}_version": document for document in CONSENT_DOCUMENTS}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError.validation(unknown[0], "not a consent field")
    if not body:
        raise ApiError.validation("body", "name at least one of " + ", ".join(sorted(fields)))
    changes = [(document, None if body[field] is None else consent_version(field, body[field]))
               for field, document in fields.items() if field in body]
    consents = await request.app[ACCOUNTS].change_consents(claims.user_id, changes,
                                                           actor(request))
    return json_response(_consents_json(consents))


@routes.get(_ME + "/audit")
async def get_audit(request: web.Request) -> web.Response:
    claims = await authenticated_user(request)
    page = page_params(request)
    entries, total = await request.app[STORAGE].audit.page(claims.user_id, page.limit,
                                                            page.offset)
    return paginated_response([audit_json(e) for e in entries], page, total)
