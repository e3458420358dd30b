"""Register and login (docs/api.md, "Authentication and accounts"), and what the sync
endpoint accepts as a token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
import uuid
from datetime import datetime
from uuid import UUID

import jwt
import orjson
import pytest

from .conftest import JWT_SECRET, Client, register

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


def _email() -> str:
    return f"auth-{uuid.uuid4().hex[:10]}@example.com"


def assert_token_pair(data: dict, email: str) -> None:
    """The contract's token pair, exactly, and our device token."""
    assert set(data) == {"user", "access_token", "refresh_token", "token_type", "expires_in",
                         "device_token"}
    assert isinstance(data["device_token"], str) and len(data["device_token"]) >= 32
    assert set(data["user"]) == {"id", "email", "role", "created_at"}
    UUID(data["user"]["id"])
    assert data["user"]["email"] == email
    assert data["user"]["role"] == "user"
    created = datetime.fromisoformat(data["user"]["created_at"])
    assert created.tzinfo is not None
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 15 * 60
    assert isinstance(data["access_token"], str) and data["access_token"].count(".") == 2
    assert isinstance(data["refresh_token"], str) and len(data["refresh_token"]) >= 32
    assert data["refresh_token"] != data["access_token"]


def assert_error(body: dict, code: str) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# -- register ---------------------------------------------------------------------------


async def test_register_answers_201_with_a_token_pair(client, db):
    email = _email()
    resp = await client.post(REGISTER, json={"email": email, "password": "correct horse"})
    assert resp.status == 201
    assert resp.headers["Content-Type"].startswith("application/json")
    body = await resp.json()
    assert set(body) == {"data"}
    assert_token_pair(body["data"], email)
    # Stored hashed with Argon2id, never as given.
    stored = await db.fetchval("SELECT password_hash FROM users WHERE id = $1",
                               UUID(body["data"]["user"]["id"]))
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored


async def test_register_accepts_the_optional_consent_versions(client):
    email = _email()
    resp = await client.post(REGISTER, json={"email": email, "password": "correct horse",
                                             "privacy_policy_version": "2026-01",
                                             "terms_version": "2026-01"})
    assert resp.status == 201
    assert_token_pair((await resp.json())["data"], email)


async def test_duplicate_email_is_a_409_whatever_its_case(client):
    email = _email()
    await register(client, email=email)
    for variant in (email, email.upper(), email.capitalize()):
        resp = await client.post(REGISTER, json={"email": variant, "password": "other pass 1"})
        assert resp.status == 409, variant
        assert_error(await resp.json(), "CONFLICT")


async def test_concurrent_registrations_of_one_email_make_one_account(client, db):
    email = _email()
    responses = await asyncio.gather(*(
        client.post(REGISTER, json={"email": e, "password": "correct horse"})
        for e in (email, email.upper(), email, email.title())
    ))
    assert sorted(r.status for r in responses) == [201, 409, 409, 409]
    assert await db.fetchval("SELECT count(*) FROM users WHERE lower(email) = lower($1)",
                             email) == 1


@pytest.mark.parametrize("password", ["", "short", "seven77", "x" * 257])
async def test_password_outside_8_to_256_is_a_400_naming_the_field(client, password):
    resp = await client.post(REGISTER, json={"email": _email(), "password": password})
    assert resp.status == 400
    error = assert_error(await resp.json(), "VALIDATION_ERROR")
    assert error["details"]["field"] == "password"
    assert "password" in error["message"]


@pytest.mark.parametrize("password", ["x" * 8, "y" * 256, "pässwörd🙂"])
async def test_passwords_at_the_bounds_are_accepted(client, password):
    email = _email()
    resp = await client.post(REGISTER, json={"email": email, "password": password})
    assert resp.status == 201
    login = await client.post(LOGIN, json={"email": email, "password": password})
    assert login.status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "correct horse"}, "email"),
        ({"email": "not-an-email", "password": "correct horse"}, "email"),
        ({"email": 42, "password": "correct horse"}, "email"),
        ({"email": "a@example.com"}, "password"),
        ({"email": "a@example.com", "password": 12345678}, "password"),
    ],
)
async def test_missing_or_wrong_fields_are_400_naming_the_field(client, body, field):
    resp = await client.post(REGISTER, json=body)
    assert resp.status == 400
    assert assert_error(await resp.json(), "VALIDATION_ERROR")["details"]["field"] == field


@pytest.mark.parametrize("route", [REGISTER, LOGIN])
@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b'{"email": "a@b.c",}'])
async def test_invalid_json_is_a_400_in_the_envelope(client, route, raw):
    resp = await client.post(route, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert resp.headers["Content-Type"].startswith("application/json")
    assert_error(await resp.json(), "VALIDATION_ERROR")
    text = await resp.text()
    assert "Traceback" not in text and "orjson" not in text


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"null", b"3"])
async def test_json_that_is_not_an_object_is_a_400(client, raw):
    resp = await client.post(REGISTER, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json(), "VALIDATION_ERROR")


async def test_a_body_that_is_not_json_is_a_415(client):
    resp = await client.post(REGISTER, data=b"email=a@b.c",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    assert_error(await resp.json(), "UNSUPPORTED_MEDIA_TYPE")


# -- login ------------------------------------------------------------------------------


async def test_login_answers_200_with_a_token_pair_for_the_same_user(client):
    email = _email()
    registered = await register(client, email=email)
    resp = await client.post(LOGIN, json={"email": email, "password": "correct horse"})
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert_token_pair(data, email)
    assert data["user"] == registered["user"]
    assert data["refresh_token"] != registered["refresh_token"]


async def test_login_email_is_case_insensitive(client):
    email = _email()
    registered = await register(client, email=email)
    resp = await client.post(LOGIN, json={"email": email.upper(), "password": "correct horse"})
    assert resp.status == 200
    assert (await resp.json())["data"]["user"]["id"] == registered["user"]["id"]


async def test_unknown_email_and_wrong_password_get_identical_401s(client):
    email = _email()
    await register(client, email=email)
    wrong = await client.post(LOGIN, json={"email": email, "password": "wrong horse"})
    unknown = await client.post(LOGIN, json={"email": _email(), "password": "correct horse"})
    assert wrong.status == unknown.status == 401
    wrong_body, unknown_body = await wrong.read(), await unknown.read()
    assert wrong_body == unknown_body
    assert_error(orjson.loads(wrong_body), "UNAUTHORIZED")
    assert wrong.headers["Content-Type"] == unknown.headers["Content-Type"]


async def test_a_short_password_at_login_is_still_a_400_naming_the_field(client):
    resp = await client.post(LOGIN, json={"email": _email(), "password": "short"})
    assert resp.status == 400
    assert assert_error(await resp.json(), "VALIDATION_ERROR")["details"]["field"] == "password"


# -- the access token -------------------------------------------------------------------


async def test_access_token_is_hs256_with_the_contract_claims_and_its_session(client):
    email = _email()
    data = await register(client, email=email)
    token = data["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == hashlib.sha256(JWT_SECRET.encode()).hexdigest()[:16]
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "email", "role", "iat", "exp", "jti", "sid", "gen"}
    assert claims["gen"] == 0 and re.fullmatch("[0-9a-f]{32}", claims["sid"])
    assert claims["sub"] == data["user"]["id"]
    assert claims["email"] == email
    assert claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert abs(claims["iat"] - time.time()) < 60
    other = jwt.decode((await register(client))["access_token"], JWT_SECRET,
                       algorithms=["HS256"])
    assert other["jti"] != claims["jti"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NONE_HEADER = _b64(b'{"alg":"none","typ":"JWT"}')


def _forge(token: str, how: str) -> str:
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    head, payload, signature = token.split(".")
    if how == "alg-none":
        return f"{NONE_HEADER}.{payload}."
    if how == "alg-none-with-signature":
        return f"{NONE_HEADER}.{payload}.{signature}"
    kid = {"kid": jwt.get_unverified_header(token)["kid"]}
    if how == "hs512-same-secret":
        return jwt.encode(claims, JWT_SECRET, algorithm="HS512", headers=kid)
    if how == "hs384-same-secret":
        return jwt.encode(claims, JWT_SECRET, algorithm="HS384", headers=kid)
    if how == "tampered-signature":
        flipped = "A" if signature[0] != "A" else "B"
        return f"{head}.{payload}.{flipped}{signature[1:]}"
    if how == "tampered-payload":
        forged = dict(claims, role="admin")
        return f"{head}.{_b64(orjson.dumps(forged))}.{signature}"
    if how in ("missing-jti", "missing-sid", "missing-gen"):
        claims.pop(how.removeprefix("missing-"))
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers=kid)
    if how == "gen-not-a-number":
        return jwt.encode(dict(claims, gen="0"), JWT_SECRET, algorithm="HS256", headers=kid)
    if how == "not-a-uuid-sub":
        return jwt.encode(dict(claims, sub="1"), JWT_SECRET, algorithm="HS256", headers=kid)
    if how == "no-kid":
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    if how == "unknown-kid":
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256", headers={"kid": "0" * 16})
    raise AssertionError(how)


def _upgrade_headers() -> dict[str, str]:
    return {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(uuid.uuid4().bytes).decode()}


@pytest.mark.parametrize(
    "how",
    ["alg-none", "alg-none-with-signature", "hs512-same-secret", "hs384-same-secret",
     "tampered-signature", "tampered-payload", "missing-jti", "missing-sid", "missing-gen",
     "gen-not-a-number", "not-a-uuid-sub", "no-kid", "unknown-kid"],
)
async def test_forged_tokens_are_refused_by_the_sync_endpoint(client, how):
    data = await register(client)
    forged = _forge(data["access_token"], how)
    resp = await client.get(f"/sync/default?token={forged}", headers=_upgrade_headers())
    assert resp.status == 401
    assert_error(await resp.json(), "UNAUTHORIZED")
    resp = await client.get("/sync/default",
                            headers=dict(_upgrade_headers(), Authorization=f"Bearer {forged}"))
    assert resp.status == 401


async def test_the_genuine_token_is_accepted_by_the_sync_endpoint(client):
    data = await register(client)
    resp = await client.get(f"/sync/default?token={data['access_token']}",
                            headers=_upgrade_headers())
    assert resp.status == 101
    resp.close()


# -- what a string may hold ---------------------------------------------------------------


@pytest.mark.parametrize("route", [REGISTER, LOGIN])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\x01", "\n", "\t", "\x1f"])
async def test_an_email_with_a_control_character_is_a_400_and_stores_nothing(
        client, db, route, char):
    local = f"ctl-{uuid.uuid4().hex[:8]}"
    email = f"{local}{char}@example.com"
    resp = await client.post(route, json={"email": email, "password": "correct horse"})
    assert resp.status == 400
    error = assert_error(await resp.json(), "VALIDATION_ERROR")
    assert error["details"]["field"] == "email"
    assert await db.fetchval("SELECT count(*) FROM users WHERE email LIKE $1",
                             local + "%") == 0


async def _nul_cases(client: Client) -> list[tuple[str, str, dict, dict]]:
    """(method, route, headers, body) with NUL in one string field; every body field
    of every route that takes one."""
    pair = await register(client)
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    nul = "bad\x00value-long-enough"
    email = pair["user"]["email"]
    return [
        ("POST", REGISTER, {}, {"email": f"n\x00{_email()}", "password": "correct horse"}),
        ("POST", REGISTER, {}, {"email": _email(), "password": nul}),
        ("POST", LOGIN, {}, {"email": f"{email}\x00", "password": "correct horse"}),
        ("POST", LOGIN, {}, {"email": email, "password": nul}),
        ("POST", LOGIN, {}, {"email": email, "password": "correct horse",
                             "device_token": pair["device_token"] + "\x00"}),
        ("POST", "/api/v1/auth/refresh", {}, {"refresh_token": pair["refresh_token"] + "\x00"}),
        ("POST", "/api/v1/auth/logout", {}, {"refresh_token": pair["refresh_token"] + "\x00"}),
        ("POST", "/api/v1/auth/password", bearer, {"current_password": nul,
                                                   "new_password": "battery staple"}),
        ("POST", "/api/v1/auth/password", bearer, {"current_password": "correct horse",
                                                   "new_password": nul}),
        ("DELETE", "/api/v1/auth/account", bearer, {"password": nul}),
    ]


async def test_nul_in_any_string_field_is_a_400_naming_it(client):
    for method, route, headers, body in await _nul_cases(client):
        resp = await client.request(method, route, json=body, headers=headers)
        assert resp.status == 400, (route, body)
        field = next(k for k, v in body.items() if "\x00" in v)
        assert assert_error(await resp.json(), "VALIDATION_ERROR")["details"]["field"] == field


async def test_nul_in_a_document_name_is_refused_without_a_500(client):
    pair = await register(client)
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    for method, path in [("GET", "/api/v1/docs/a%00b"), ("DELETE", "/api/v1/docs/a%00b"),
                         ("GET", "/api/v1/docs/a%00b/update")]:
        resp = await client.request(method, path, headers=bearer)
        assert resp.status == 404, path
        assert_error(await resp.json(), "NOT_FOUND")


@pytest.mark.parametrize("route", [REGISTER, LOGIN])
async def test_token_responses_are_not_stored_by_caches(client, route):
    email = _email()
    if route == LOGIN:
        await register(client, email=email)
    resp = await client.post(route, json={"email": email, "password": "correct horse"})
    assert resp.status in (200, 201)
    assert resp.headers["Cache-Control"] == "no-store"
