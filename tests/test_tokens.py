"""Refresh rotation and reuse, logout, password change, account deletion, token rules."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import aiohttp
import asyncpg
import jwt
import orjson
import pytest
from pycrdt import Map

from modi_sync import tokens
from modi_sync.app_keys import REDIS, REFRESH_TOKENS
from storage.refresh_tokens import RefreshResult

from .conftest import JWT_SECRET, Client, register, ws_url
from .frozen_clock import one_instant  # noqa: F401 - a fixture
from .yclient import YClient, eventually


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _accepted(client: Client, token: str) -> bool:
    """Does REST take the token? (401 or not)."""
    status = (await client.get("/api/v1/docs", headers=_bearer(token))).status
    assert status in (200, 401), status
    return status == 200


async def _upgrade_status(client: Client, token: str, name: str = "default") -> int:
    resp = await client.get(f"/sync/{name}?token={token}", headers=_upgrade_headers())
    resp.close()
    return resp.status


def _upgrade_headers() -> dict[str, str]:
    return {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(uuid.uuid4().bytes).decode()}


async def _stored_rows(db: asyncpg.Connection, user_id: uuid.UUID) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1", user_id))


async def _refresh(client: Client, token: str) -> aiohttp.ClientResponse:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_refresh_rotates_and_retires_the_old_token(client):
    pair = await register(client)
    resp = await _refresh(client, pair["refresh_token"])
    assert resp.status == 200
    new = (await resp.json())["data"]
    assert new["refresh_token"] != pair["refresh_token"]
    assert new["user"]["id"] == pair["user"]["id"]
    me = await client.post("/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]})
    assert me.status == 200


async def test_reusing_a_retired_token_revokes_the_family(client):
    pair = await register(client)
    second = (await (await _refresh(client, pair["refresh_token"])).json())["data"]
    reuse = await _refresh(client, pair["refresh_token"])
    assert reuse.status == 401
    assert (await reuse.json())["error"]["code"] == "UNAUTHORIZED"
    # The token descended from the same login is dead too.
    assert (await _refresh(client, second["refresh_token"])).status == 401


async def test_reuse_leaves_other_logins_alone(client):
    pair = await register(client, email=f"f-{uuid.uuid4().hex[:8]}@example.com")
    login = await client.post("/api/v1/auth/login", json={
        "email": pair["user"]["email"], "password": "correct horse"})
    other = (await login.json())["data"]
    await _refresh(client, pair["refresh_token"])
    await _refresh(client, pair["refresh_token"])  # reuse: revokes the first family only
    assert (await _refresh(client, other["refresh_token"])).status == 200


async def test_concurrent_refreshes_with_one_token_exactly_one_wins(client):
    pair = await register(client)
    results = await asyncio.gather(*(_refresh(client, pair["refresh_token"]) for _ in range(5)))
    assert sorted(r.status for r in results) == [200, 401, 401, 401, 401]


async def test_redis_holds_no_presentable_refresh_token(client):
    pair = await register(client)
    redis = client.server.app[REDIS]
    keys = [k.decode() async for k in redis.scan_iter("refresh:*")]
    assert keys, "refresh tokens are kept in Redis"
    assert not any(pair["refresh_token"] in k for k in keys)
    for key in keys:
        values = await redis.hgetall(key)
        assert all(pair["refresh_token"].encode() not in v for v in values.values())
    assert 0 < await redis.ttl(keys[0]) <= 7 * 24 * 3600


async def test_unknown_refresh_token_is_refused(client):
    assert (await _refresh(client, "not-a-token")).status == 401


async def test_logout_retires_the_refresh_token(client):
    pair = await register(client)
    resp = await client.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert resp.status == 204
    assert (await _refresh(client, pair["refresh_token"])).status == 401


async def test_logout_ends_the_sessions_access_tokens_for_rest_and_sync(client):
    pair = await register(client)
    refreshed = (await (await _refresh(client, pair["refresh_token"])).json())["data"]
    other_login = await client.post("/api/v1/auth/login", json={
        "email": pair["user"]["email"], "password": "correct horse"})
    other = (await other_login.json())["data"]
    session_tokens = [pair["access_token"], refreshed["access_token"]]
    for token in [*session_tokens, other["access_token"]]:
        assert await _accepted(client, token)  # and now remembered by this instance

    resp = await client.post("/api/v1/auth/logout",
                             json={"refresh_token": refreshed["refresh_token"]})
    assert resp.status == 204
    for token in session_tokens:  # every access token of the session, at once
        assert not await _accepted(client, token)
        assert await _upgrade_status(client, token) == 401
        put = await client.post("/api/v1/docs/default/update", data=b"\x00\x00",
                                headers={**_bearer(token),
                                         "Content-Type": "application/octet-stream"})
        assert put.status == 401
    # The other login of the same user is another session: untouched.
    assert await _accepted(client, other["access_token"])
    assert await _upgrade_status(client, other["access_token"]) == 101


async def test_reuse_ends_the_familys_access_tokens_too(client):
    pair = await register(client)
    thief = (await (await _refresh(client, pair["refresh_token"])).json())["data"]
    assert await _accepted(client, thief["access_token"])
    assert (await _refresh(client, pair["refresh_token"])).status == 401  # reuse
    for token in (pair["access_token"], thief["access_token"]):
        assert not await _accepted(client, token)
        assert await _upgrade_status(client, token) == 401


@pytest.mark.usefixtures("one_instant")
async def test_password_change_revokes_every_refresh_token(client):
    pair = await register(client)
    login = await client.post("/api/v1/auth/login", json={
        "email": pair["user"]["email"], "password": "correct horse"})
    other = (await login.json())["data"]
    resp = await client.post(
        "/api/v1/auth/password",
        json={"current_password": "correct horse", "new_password": "battery staple"},
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    assert resp.status == 200
    fresh = (await resp.json())["data"]
    for old in (pair["refresh_token"], other["refresh_token"]):
        assert (await _refresh(client, old)).status == 401
    # The old access token is refused; the pair handed back works.
    old_call = await client.post("/api/v1/auth/password", json={
        "current_password": "battery staple", "new_password": "another one"},
        headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert old_call.status == 401
    for old in (pair["access_token"], other["access_token"]):
        assert not await _accepted(client, old)
        assert await _upgrade_status(client, old) == 401
    # The fresh pair is issued under the new generation: it works, REST and sync.
    assert jwt.decode(fresh["access_token"], JWT_SECRET, algorithms=["HS256"])["gen"] == 1
    assert await _accepted(client, fresh["access_token"])
    assert await _upgrade_status(client, fresh["access_token"]) == 101
    assert (await _refresh(client, fresh["refresh_token"])).status == 200
    relog = await client.post("/api/v1/auth/login", json={
        "email": pair["user"]["email"], "password": "battery staple"})
    assert relog.status == 200


async def test_password_change_needs_the_current_password(client):
    pair = await register(client)
    resp = await client.post(
        "/api/v1/auth/password",
        json={"current_password": "wrong password", "new_password": "battery staple"},
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    assert resp.status == 401
    assert (await _refresh(client, pair["refresh_token"])).status == 200


@pytest.mark.usefixtures("one_instant")
async def test_account_deletion_erases_and_refuses_its_tokens(client, db):
    pair = await register(client)
    user_id = uuid.UUID(pair["user"]["id"])
    sync = await YClient(client.session, ws_url(client, "default", pair["access_token"])).connect()
    await sync.wait_synced()
    sync.workouts()["w"] = Map({"name": "row"})
    await eventually(lambda: _stored_rows(db, user_id))
    await sync.disconnect()
    resp = await client.delete("/api/v1/auth/account", json={"password": "correct horse"},
                               headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert resp.status == 204
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1", user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 0
    assert (await _refresh(client, pair["refresh_token"])).status == 401
    # Refused at the door, before any upgrade: a deleted user opens no document.
    for name in ("default", "brand-new"):
        assert await _upgrade_status(client, pair["access_token"], name) == 401
    assert not await _accepted(client, pair["access_token"])
    assert await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 0


def _forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return f"{enc(orjson.dumps(header))}.{enc(orjson.dumps(claims))}.{enc(signature)}"


def _claims(pair: dict) -> dict:
    """The genuine token's claims (its session and generation), to be bent."""
    return jwt.decode(pair["access_token"], JWT_SECRET, algorithms=["HS256"])


def _signed(claims: dict, pair: dict, algorithm: str = "HS256") -> str:
    kid = jwt.get_unverified_header(pair["access_token"])["kid"]
    return jwt.encode(claims, JWT_SECRET, algorithm=algorithm, headers={"kid": kid})


@pytest.mark.parametrize("kind", ["none", "HS512", "RS256", "tampered", "expired", "no-jti",
                                  "other-generation"])
async def test_bad_access_tokens_are_refused(client, kind):
    pair = await register(client)
    claims = _claims(pair)
    if kind == "none":
        token = _forge({"alg": "none", "typ": "JWT"}, claims)
    elif kind == "HS512":
        token = _signed(claims, pair, "HS512")
    elif kind == "RS256":
        token = _forge({"alg": "RS256", "typ": "JWT"}, claims, b"\x00" * 256)
    elif kind == "tampered":  # a valid token whose payload now claims admin
        head, _, sig = pair["access_token"].split(".")
        forged = _forge({"alg": "HS256", "typ": "JWT"}, dict(claims, role="admin"))
        token = f"{head}.{forged.split('.')[1]}.{sig}"
    elif kind == "expired":
        claims["iat"], claims["exp"] = claims["iat"] - 3600, claims["iat"] - 1800
        token = _signed(claims, pair)
    elif kind == "no-jti":
        del claims["jti"]
        token = _signed(claims, pair)
    else:  # signed, of a generation the user has not reached
        token = _signed(dict(claims, gen=claims["gen"] + 1), pair)
    headers = {"Authorization": f"Bearer {token}"}
    resp = await client.post("/api/v1/auth/password", headers=headers, json={
        "current_password": "correct horse", "new_password": "battery staple"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    assert await _upgrade_status(client, token) == 401


async def test_access_token_claims_are_the_contracts_and_the_session(client):
    pair = await register(client)
    header = jwt.get_unverified_header(pair["access_token"])
    claims = jwt.decode(pair["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert header["alg"] == "HS256"
    assert set(claims) == {"sub", "email", "role", "iat", "exp", "jti", "sid", "gen"}
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["sub"] == pair["user"]["id"] and claims["role"] == "user"
    # A refresh stays in the session (same sid); a login opens another.
    refreshed = (await (await _refresh(client, pair["refresh_token"])).json())["data"]
    again = jwt.decode(refreshed["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert again["sid"] == claims["sid"] and again["gen"] == claims["gen"]
    login = await client.post("/api/v1/auth/login", json={
        "email": pair["user"]["email"], "password": "correct horse"})
    other = jwt.decode((await login.json())["data"]["access_token"], JWT_SECRET,
                       algorithms=["HS256"])
    assert other["sid"] != claims["sid"]


# -- a refresh racing a password change (issue 19, item 8) --------------------------------


async def test_a_refresh_racing_a_password_change_yields_dead_tokens(client):
    """The password changes after the refresh token was checked and before the new pair
    is issued: the new pair must be of the old generation, hence refused."""
    pair = await register(client)
    refresh_tokens = client.server.app[REFRESH_TOKENS]
    checked = refresh_tokens.use

    async def use_then_password_changes(token: str) -> RefreshResult:
        result = await checked(token)
        resp = await client.post("/api/v1/auth/password", headers=_bearer(pair["access_token"]),
                                 json={"current_password": "correct horse",
                                       "new_password": "battery staple"})
        assert resp.status == 200
        return result

    refresh_tokens.use = use_then_password_changes  # the instance's, for this test's app only
    raced = await _refresh(client, pair["refresh_token"])
    assert raced.status == 200
    minted = (await raced.json())["data"]
    assert not await _accepted(client, minted["access_token"])
    assert await _upgrade_status(client, minted["access_token"]) == 401
    del refresh_tokens.use
    assert (await _refresh(client, minted["refresh_token"])).status == 401


# -- the token classes --------------------------------------------------------------------


def _issue(access: tokens.AccessTokens) -> str:
    return access.issue(uuid.uuid4(), "a@example.com", "user", session=uuid.uuid4().hex,
                        generation=0)


def test_a_remembered_token_still_expires_and_a_changed_one_is_checked_again(monkeypatch):
    access = tokens.AccessTokens(JWT_SECRET, ttl_seconds=60)
    token = _issue(access)
    claims = access.verify(token)
    assert access.verify(token) == claims  # remembered

    head, payload, signature = token.split(".")
    forged = ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
    with pytest.raises(tokens.InvalidToken):
        access.verify(forged)

    now = time.time()
    monkeypatch.setattr(tokens.time, "time", lambda: now + 61)
    with pytest.raises(tokens.InvalidToken):
        access.verify(token)


def test_remembered_tokens_are_bounded():
    access = tokens.AccessTokens(JWT_SECRET, ttl_seconds=60)
    for _ in range(tokens._VERIFIED_KEPT + 10):
        access.verify(_issue(access))
    assert len(access._verified) == tokens._VERIFIED_KEPT
