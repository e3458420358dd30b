"""``/api/v1/users/me``: profile, consents and the audit log (docs/api.md, "GDPR"), and
what a withdrawn consent blocks (docs/gdpr.md)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from pycrdt import Doc, Map

from .conftest import Client, register, synced

ME = "/api/v1/users/me"
PASSWORD = "correct horse"


def _bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def _email() -> str:
    return f"gdpr-{uuid.uuid4().hex[:10]}@example.com"


async def _data(resp, status: int = 200) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["data"]


async def _error(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


async def _audit_actions(client: Client, pair: dict) -> list[str]:
    entries = await _data(await client.get(ME + "/audit?limit=100", headers=_bearer(pair)))
    return [e["action"] for e in entries]


# -- profile ------------------------------------------------------------------------------


async def test_the_profile_is_the_callers_own(client):
    pair = await register(client)
    await register(client)  # someone else
    profile = await _data(await client.get(ME, headers=_bearer(pair)))
    assert profile["id"] == pair["user"]["id"]
    assert profile["email"] == pair["user"]["email"]
    assert set(profile) == {"id", "email", "role", "created_at", "updated_at"}
    assert (await client.get(ME)).status == 401


async def test_changing_the_email_needs_the_current_password(client):
    pair = await register(client)
    new = _email()
    wrong = await client.patch(ME, json={"email": new, "current_password": "not the one"},
                               headers=_bearer(pair))
    assert (await _error(wrong, 401))["code"] == "UNAUTHORIZED"
    missing = await client.patch(ME, json={"email": new}, headers=_bearer(pair))
    assert (await _error(missing, 400))["details"]["field"] == "current_password"

    changed = await _data(await client.patch(
        ME, json={"email": new, "current_password": PASSWORD}, headers=_bearer(pair)))
    assert changed["email"] == new
    login = await client.post("/api/v1/auth/login", json={"email": new, "password": PASSWORD})
    assert login.status == 200
    assert "account.email_changed" in await _audit_actions(client, pair)


async def test_a_taken_email_or_an_unknown_field_is_refused(client):
    pair = await register(client)
    other = await register(client)
    taken = await client.patch(
        ME, json={"email": other["user"]["email"].upper(), "current_password": PASSWORD},
        headers=_bearer(pair))
    assert (await _error(taken, 409))["code"] == "CONFLICT"
    odd = await client.patch(ME, json={"email": _email(), "current_password": PASSWORD,
                                       "role": "admin"}, headers=_bearer(pair))
    assert (await _error(odd, 400))["details"]["field"] == "role"
    profile = await _data(await client.get(ME, headers=_bearer(pair)))
    assert profile["email"] == pair["user"]["email"] and profile["role"] == "user"


# -- consents -----------------------------------------------------------------------------


async def test_registration_records_the_versions_accepted(client):
    resp = await client.post("/api/v1/auth/register", json={
        "email": _email(), "password": PASSWORD,
        "privacy_policy_version": "2026-05", "terms_version": 3})
    pair = await _data(resp, 201)
    consents = await _data(await client.get(ME + "/consents", headers=_bearer(pair)))
    assert consents["privacy_policy"]["version"] == "2026-05"
    assert consents["terms"]["version"] == "3"  # an integer is kept as its string
    assert consents["privacy_policy"]["action"] == "accepted"
    assert consents["processing_restricted"] is False
    assert consents["history_total"] == 2


async def test_a_bad_version_is_refused_and_records_nothing(client):
    email = _email()
    for version in ("", "x" * 33, "v 1", -1, True, {"v": 1}):
        resp = await client.post("/api/v1/auth/register", json={
            "email": email, "password": PASSWORD, "privacy_policy_version": version})
        assert (await _error(resp, 400))["details"]["field"] == "privacy_policy_version"
    login = await client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status == 401  # no account was made


async def test_every_acceptance_and_withdrawal_is_kept(client):
    pair = await register(client)
    steps = [{"privacy_policy_version": "1", "terms_version": "1"},
             {"privacy_policy_version": None},
             {"privacy_policy_version": "2"},
             {"privacy_policy_version": "2"}]  # the same again: no new row
    for body in steps:
        await _data(await client.put(ME + "/consents", json=body, headers=_bearer(pair)))
    consents = await _data(await client.get(ME + "/consents", headers=_bearer(pair)))
    history = [(c["document"], c["version"], c["action"]) for c in consents["history"]]
    assert history == [("privacy_policy", "2", "accepted"),
                       ("privacy_policy", None, "withdrawn"),
                       ("terms", "1", "accepted"),
                       ("privacy_policy", "1", "accepted")]
    assert consents["terms"]["version"] == "1"
    page = await _data(await client.get(ME + "/consents?limit=1&page=2", headers=_bearer(pair)))
    assert [c["version"] for c in page["history"]] == [None]
    actions = await _audit_actions(client, pair)
    assert actions.count("consent.accepted") == 3 and actions.count("consent.withdrawn") == 1


async def test_a_consent_body_must_name_known_documents(client):
    pair = await register(client)
    for body in ({}, {"marketing_version": "1"}, {"terms_version": "no spaces"}):
        resp = await client.put(ME + "/consents", json=body, headers=_bearer(pair))
        await _error(resp, 400)
    consents = await _data(await client.get(ME + "/consents", headers=_bearer(pair)))
    assert consents["history_total"] == 0


# -- a withdrawn privacy policy ------------------------------------------------------------


def _update(text: str) -> bytes:
    doc: Doc = Doc()
    doc.get("weights", type=Map)[str(uuid.uuid4())] = Map({"weight": 80.5, "note": text})
    return doc.get_update()


async def test_a_withdrawal_closes_sockets_everywhere_and_refuses_writes(make_client):
    first = await make_client()
    second = await make_client()  # another instance
    pair = await register(first)
    here = await synced(first, pair["access_token"])
    there = await synced(second, pair["access_token"], "notes")
    resp = await first.put(ME + "/consents", json={"privacy_policy_version": None},
                           headers=_bearer(pair))
    assert (await _data(resp))["processing_restricted"] is True
    assert [await here.wait_closed(1.0), await there.wait_closed(1.0)] == [4403, 4403]

    for client in (first, second):
        upgrade = await client.get(f"/sync/default?token={pair['access_token']}")
        assert (await _error(upgrade, 403))["code"] == "FORBIDDEN"
        post = await client.post("/api/v1/docs/default/update", data=_update("x"),
                                 headers={**_bearer(pair),
                                          "Content-Type": "application/octet-stream"})
        assert "consent" in (await _error(post, 403))["message"]


async def test_reading_exporting_and_erasing_still_work_after_a_withdrawal(client, db):
    pair = await register(client)
    headers = {**_bearer(pair), "Content-Type": "application/octet-stream"}
    resp = await client.post("/api/v1/docs/log/update", data=_update("kept"), headers=headers)
    assert resp.status == 200
    await _data(await client.put(ME + "/consents", json={"privacy_policy_version": None},
                                 headers=_bearer(pair)))
    doc = await _data(await client.get("/api/v1/docs/log", headers=_bearer(pair)))
    assert [w["note"] for w in doc["weights"].values()] == ["kept"]
    assert (await client.get(ME, headers=_bearer(pair))).status == 200
    assert (await client.get(ME + "/audit", headers=_bearer(pair))).status == 200
    export = await client.get(ME + "/export", headers=_bearer(pair))
    assert export.status == 200
    await export.read()
    erase = await client.delete("/api/v1/auth/account", json={"password": PASSWORD},
                                headers=_bearer(pair))
    assert erase.status == 204
    assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1",
                             uuid.UUID(pair["user"]["id"])) == 0


async def test_accepting_again_lets_the_user_sync_again(client):
    pair = await register(client)
    await _data(await client.put(ME + "/consents", json={"privacy_policy_version": None},
                                 headers=_bearer(pair)))
    assert (await client.get(f"/sync/default?token={pair['access_token']}")).status == 403
    await _data(await client.put(ME + "/consents", json={"privacy_policy_version": "2"},
                                 headers=_bearer(pair)))
    conn = await synced(client, pair["access_token"])  # the cached state was dropped
    await conn.disconnect()


# -- the audit log -------------------------------------------------------------------------


async def test_logins_failed_logins_and_logouts_are_audited(client, db):
    pair = await register(client)
    email = pair["user"]["email"]
    await client.post("/api/v1/auth/login", json={"email": email, "password": "wrong one!"})
    login = await _data(await client.post("/api/v1/auth/login",
                                          json={"email": email, "password": PASSWORD}))
    await client.post("/api/v1/auth/logout", json={"refresh_token": login["refresh_token"]})
    actions = await _audit_actions(client, pair)
    assert actions[:3] == ["auth.logout", "auth.login", "auth.login_failed"]
    assert actions[-1] == "account.created"

    entries = await _data(await client.get(ME + "/audit?limit=100", headers=_bearer(pair)))
    for entry in entries:
        assert entry["ip"] == "127.0.0.0"  # truncated to its /24 by default
        assert entry["request_id"]
    # A failed login for an email with no account keeps that email, and no user.
    unknown = _email()
    await client.post("/api/v1/auth/login", json={"email": unknown, "password": PASSWORD})
    row = await db.fetchrow("SELECT user_id, email FROM audit_log WHERE email = $1", unknown)
    assert row["user_id"] is None and row["email"] == unknown


async def test_the_audit_log_is_paginated_and_the_callers_own(client):
    pair = await register(client)
    other = await register(client)
    for _ in range(3):
        await client.post("/api/v1/auth/login",
                          json={"email": pair["user"]["email"], "password": PASSWORD})
    resp = await client.get(ME + "/audit?limit=2&page=2", headers=_bearer(pair))
    assert resp.status == 200
    body = await resp.json()
    assert body["pagination"] == {"page": 2, "limit": 2, "total": 4, "total_pages": 2}
    assert [e["action"] for e in body["data"]] == ["auth.login", "account.created"]
    theirs = await _data(await client.get(ME + "/audit", headers=_bearer(other)))
    assert [e["action"] for e in theirs] == ["account.created"]
    bad = await client.get(ME + "/audit?limit=101", headers=_bearer(pair))
    assert (await _error(bad, 400))["details"]["field"] == "limit"


async def test_the_audit_log_refuses_updates_and_deletes(db):
    await db.execute("INSERT INTO audit_log (request_id, action, resource_type) "
                     "VALUES ('r', 'test.entry', 'test')")
    for statement in ("UPDATE audit_log SET action = 'forged' WHERE action = 'test.entry'",
                      "UPDATE audit_log SET email = NULL, ip = NULL WHERE action = 'test.entry'",
                      "DELETE FROM audit_log WHERE action = 'test.entry'",
                      "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await db.execute(statement)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'test.entry'") >= 1
