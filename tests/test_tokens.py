"""Refresh rotation and reuse, logout, password change, account deletion, token rules."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid

import jwt
import orjson
import pytest
from pycrdt import Map

from modi_sync import tokens
from modi_sync.keys import REDIS

from .conftest import JWT_SECRET, register, ws_url
from .yclient import YClient, eventually


async def _next_second(access_token: str) -> None:
    """Revocation has the one-second resolution of ``iat``: act in a later second."""
    iat = jwt.decode(access_token, options={"verify_signature": False})["iat"]
    await eventually(lambda: int(time.time()) > iat, timeout=3)


async def _stored_rows(db, user_id: uuid.UUID) -> bool:  # noqa: ANN001
    return bool(await db.fetchval(
        "SELECT count(*) FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1", user_id))


async def _refresh(client, token: str):  # noqa: ANN001, ANN202
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


async def test_password_change_revokes_every_refresh_token(client):
    pair = await register(client)
    login = await client.post("/api/v1/auth/login", json={
        "email": pair["user"]["email"], "password": "correct horse"})
    other = (await login.json())["data"]
    await _next_second(pair["access_token"])
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


async def test_account_deletion_erases_and_refuses_its_tokens(client, db):
    pair = await register(client)
    user_id = uuid.UUID(pair["user"]["id"])
    sync = await YClient(client.session, ws_url(client, "default", pair["access_token"])).connect()
    await sync.wait_synced()
    sync.workouts()["w"] = Map({"name": "row"})
    await eventually(lambda: _stored_rows(db, user_id))
    await sync.disconnect()
    await _next_second(pair["access_token"])
    resp = await client.delete("/api/v1/auth/account", json={"password": "correct horse"},
                               headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert resp.status == 204
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1", user_id) == 0
    assert await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 0
    assert (await _refresh(client, pair["refresh_token"])).status == 401
    again = await client.get(f"/sync/default?token={pair['access_token']}")
    assert again.status == 401


def _forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return f"{enc(orjson.dumps(header))}.{enc(orjson.dumps(claims))}.{enc(signature)}"


def _claims(user_id: str) -> dict:
    now = int(time.time())
    return {"sub": user_id, "email": "x@example.com", "role": "admin", "iat": now,
            "exp": now + 600, "jti": uuid.uuid4().hex}


@pytest.mark.parametrize("kind", ["none", "HS512", "RS256", "tampered", "expired", "no-jti"])
async def test_bad_access_tokens_are_refused(client, kind):
    pair = await register(client)
    claims = _claims(pair["user"]["id"])
    if kind == "none":
        token = _forge({"alg": "none", "typ": "JWT"}, claims)
    elif kind == "HS512":
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS512")
    elif kind == "RS256":
        token = _forge({"alg": "RS256", "typ": "JWT"}, claims, b"\x00" * 256)
    elif kind == "tampered":  # a valid token whose payload now claims admin
        head, _, sig = pair["access_token"].split(".")
        payload = jwt.decode(pair["access_token"], JWT_SECRET, algorithms=["HS256"])
        payload["role"] = "admin"
        forged = _forge({"alg": "HS256", "typ": "JWT"}, payload).split(".")[1]
        token = f"{head}.{forged}.{sig}"
    elif kind == "expired":
        claims["iat"], claims["exp"] = claims["iat"] - 3600, claims["iat"] - 1800
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    else:
        del claims["jti"]
        token = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"}
    resp = await client.post("/api/v1/auth/password", headers=headers, json={
        "current_password": "correct horse", "new_password": "battery staple"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    assert (await client.get(f"/sync/default?token={token}")).status == 401


async def test_access_token_claims_are_exactly_the_contracts(client):
    pair = await register(client)
    header = jwt.get_unverified_header(pair["access_token"])
    claims = jwt.decode(pair["access_token"], JWT_SECRET, algorithms=["HS256"])
    assert header["alg"] == "HS256"
    assert set(claims) == {"sub", "email", "role", "iat", "exp", "jti"}
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["sub"] == pair["user"]["id"] and claims["role"] == "user"


def test_a_remembered_token_still_expires_and_a_changed_one_is_checked_again(monkeypatch):
    access = tokens.AccessTokens(JWT_SECRET, ttl_seconds=60)
    token = access.issue(uuid.uuid4(), "a@example.com", "user")
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
        access.verify(access.issue(uuid.uuid4(), "a@example.com", "user"))
    assert len(access._verified) == tokens._VERIFIED_KEPT
