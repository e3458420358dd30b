"""The GDPR export (docs/api.md, "GDPR"): ``GET /api/v1/users/me/export`` and
``modi-sync user export``. That its memory stays flat however large the account is
measured by bench/export.py, not here."""

from __future__ import annotations

import base64
import stat
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pycrdt import Doc, Map, Text

from modi_sync.app_keys import REGISTRY, UPDATE_LOG
from modi_sync.contract import DOCUMENT_ROOTS
from storage.foods import FoodStore, NewFood

from .conftest import Client, register, run_cli_raw, synced, unique_gtin13
from .yclient import eventually

EXPORT = "/api/v1/users/me/export"
PASSWORD = "correct horse"


def _bearer(pair: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def _edit(doc: Doc, change: Any) -> bytes:
    """The update of one transaction that runs ``change(doc)``."""
    captured: list[bytes] = []
    sub = doc.observe(lambda event: captured.append(event.update))
    with doc.transaction():
        change(doc)
    doc.unobserve(sub)
    return captured[0]


def _roots(doc: Doc) -> dict[str, Any]:
    """The schema's roots, as the server shows them."""
    return {root: doc.get(root, type=Map).to_py() or {} for root in DOCUMENT_ROOTS}


def _rebuilt(update_b64: str) -> Doc:
    doc: Doc = Doc()
    doc.apply_update(base64.b64decode(update_b64, validate=True))
    return doc


async def _post_update(client: Client, pair: dict[str, Any], name: str, update: bytes) -> None:
    resp = await client.post(f"/api/v1/docs/{name}/update", data=update, headers={
        **_bearer(pair), "Content-Type": "application/octet-stream"})
    assert resp.status == 200, await resp.text()


async def _export(client: Client, pair: dict[str, Any]) -> dict[str, Any]:
    resp = await client.get(EXPORT, headers=_bearer(pair))
    assert resp.status == 200, await resp.text()
    return orjson.loads(await resp.read())["data"]


async def _json(client: Client, pair: dict[str, Any], path: str) -> Any:
    resp = await client.get(path, headers=_bearer(pair))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def _account_with_data(client: Client, pool: Any) -> tuple[dict[str, Any], Any]:
    """A user with three documents, a consent history and a contributed food; the
    websocket client of ``plan`` stays connected (returned)."""
    resp = await client.post("/api/v1/auth/register", json={
        "email": f"export-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD,
        "privacy_policy_version": "2026-05", "terms_version": "3"})
    assert resp.status == 201
    pair = (await resp.json())["data"]
    for body in ({"terms_version": None}, {"terms_version": "4"}):
        put = await client.put("/api/v1/users/me/consents", json=body, headers=_bearer(pair))
        assert put.status == 200

    # "plan": edited by a real y-websocket client.
    socket = await synced(client, pair["access_token"], "plan")
    with socket.doc.transaction():
        socket.workouts()["w1"] = Map({"name": "squat", "weight": 100.5, "sets": 5,
                                       "reps": 5, "day": 1, "day_order": 0})
        socket.weights()["m1"] = Map({"weight": 81.2, "date_time": "2026-05-01T07:00:00Z"})
    socket.workouts()["w2"] = Map({"name": "row", "weight": 60, "sets": 3, "reps": 10})
    del socket.workouts()["w2"]  # deleted content: not in the JSON, nor in what is rebuilt
    socket.workouts()["w1"]["notes"] = "felt heavy"

    async def plan_stored() -> bool:
        doc = await _json(client, pair, "/api/v1/docs/plan")
        return bool(doc["workouts"].get("w1", {}).get("notes") == "felt heavy")
    await eventually(plan_stored)

    # "log": through POST .../update, with a root outside the schema as well.
    doc: Doc = Doc()
    await _post_update(client, pair, "log", _edit(doc, lambda d: d.get("food_logs", type=Map)
                       .__setitem__("f1", Map({"food_id": "oats", "quantity_g": 80,
                                               "meal_type": "breakfast",
                                               "date": "2026-05-01"}))))
    await _post_update(client, pair, "log", _edit(doc, lambda d: d.get("favorites", type=Map)
                       .__setitem__("oats", True)))
    await _post_update(client, pair, "log", _edit(doc, lambda d: d.get("notes", type=Text)
                       .insert(0, "not a schema root")))

    user_id = uuid.UUID(pair["user"]["id"])
    barcode = unique_gtin13()
    await FoodStore(pool).contribute(user_id, NewFood(
        "Oat bar", Decimal("412.5"), Decimal("9.1"), Decimal("61"), Decimal("14.2"),
        brand="Acme", barcode=barcode), 10)
    return pair, socket


async def test_the_export_holds_the_account_and_rebuilds_every_document(make_client, pool):
    client = await make_client(room_idle_seconds=60)
    pair, socket = await _account_with_data(client, pool)
    resp = await client.get(EXPORT, headers=_bearer(pair))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Disposition"].startswith('attachment; filename="magni-export-')
    assert "X-Rate-Limit-Remaining" in resp.headers
    data = orjson.loads(await resp.read())["data"]

    assert data["format"] == 1 and data["exported_at"]
    assert data["profile"] == await _json(client, pair, "/api/v1/users/me")
    assert [(c["document"], c["version"], c["action"]) for c in data["consents"]] == [
        ("privacy_policy", "2026-05", "accepted"), ("terms", "3", "accepted"),
        ("terms", None, "withdrawn"), ("terms", "4", "accepted")]

    listed = {d["name"]: d for d in await _json(client, pair, "/api/v1/docs")}
    assert [d["name"] for d in data["documents"]] == ["log", "plan"]
    for exported in data["documents"]:
        name = exported["name"]
        live = await _json(client, pair, f"/api/v1/docs/{name}")
        rebuilt = _rebuilt(exported["update"])
        assert _roots(rebuilt) == live == exported["content"]
        assert {k: exported[k] for k in ("updates", "size_bytes", "updated_at")} == {
            k: listed[name][k] for k in ("updates", "size_bytes", "updated_at")}
    plan = data["documents"][1]["content"]
    assert plan["workouts"] == {"w1": {"name": "squat", "weight": 100.5, "sets": 5, "reps": 5,
                                       "day": 1, "day_order": 0, "notes": "felt heavy"}}
    # The update is the whole document, roots outside the schema included.
    log = _rebuilt(data["documents"][0]["update"])
    assert str(log.get("notes", type=Text)) == "not a schema root"
    assert data["documents"][0]["content"]["favorites"] == {"oats": True}

    [food] = data["foods"]
    stored_barcode = await pool.fetchval("SELECT barcode FROM foods WHERE id = $1",
                                         uuid.UUID(food["id"]))
    assert (food["name"], food["brand"], food["barcode"], food["calories"], food["verified"]) \
        == ("Oat bar", "Acme", stored_barcode, 412.5, False)
    assert data["images"] == []

    audit = data["audit"]
    assert [e["id"] for e in audit] == sorted(e["id"] for e in audit)
    actions = [e["action"] for e in audit]
    assert actions[0] == "account.created" and actions[-1] == "account.exported"
    assert actions.count("consent.withdrawn") == 1
    assert audit[-1]["request_id"] == resp.headers["X-Request-ID"]
    assert audit[-1]["resource_type"] == "user"
    assert audit[-1]["resource_id"] == pair["user"]["id"]

    # The room a socket holds stays; the export did not take it from its client.
    registry = client.server.app[REGISTRY]
    assert (uuid.UUID(pair["user"]["id"]), "plan") in registry.rooms
    assert socket.ws is not None and not socket.ws.closed
    await socket.disconnect()


async def test_rooms_the_export_loads_leave_memory_at_once(make_client):
    """Not after the idle period (a minute here): 50 large documents must not all be
    held at the end of an export."""
    client = await make_client(room_idle_seconds=60)
    pair = await register(client)
    user_id = uuid.UUID(pair["user"]["id"])
    update_log = client.server.app[UPDATE_LOG]
    names = [f"stored-{i}" for i in range(3)]
    doc_ids = await update_log.create_documents([(user_id, n) for n in names])
    for i, doc_id in enumerate(doc_ids):
        assert doc_id is not None
        doc: Doc = Doc()
        updates = [_edit(doc, lambda d, k=k, w=70.0 + i: d.get("weights", type=Map)
                         .__setitem__(k, Map({"weight": w}))) for k in ("a", "b")]
        await update_log.append_many([doc_id, doc_id], updates)
    registry = client.server.app[REGISTRY]
    assert not [key for key in registry.rooms if key[0] == user_id]

    data = await _export(client, pair)
    assert [d["name"] for d in data["documents"]] == names
    assert all(set(_roots(_rebuilt(d["update"]))["weights"]) == {"a", "b"}
               for d in data["documents"])
    await eventually(lambda: not [key for key in registry.rooms if key[0] == user_id],
                     timeout=5)


async def test_an_export_holds_nothing_of_another_user(client, pool):
    first, socket = await _account_with_data(client, pool)
    await socket.disconnect()
    second = await register(client)
    await _post_update(client, second, "plan", _edit(Doc(), lambda d: d.get(
        "weights", type=Map).__setitem__("mine", Map({"weight": 60.0}))))

    resp = await client.get(EXPORT, headers=_bearer(second))
    assert resp.status == 200
    body = await resp.read()
    for secret in (first["user"]["id"], first["user"]["email"], "squat", "Oat bar", "oats",
                   "felt heavy"):
        assert secret.encode() not in body
    data = orjson.loads(body)["data"]
    assert data["profile"]["id"] == second["user"]["id"]
    [plan] = data["documents"]
    assert list(_roots(_rebuilt(plan["update"]))["weights"]) == ["mine"]
    assert data["foods"] == [] and data["consents"] == []
    assert {e["action"] for e in data["audit"]} == {"account.created", "account.exported"}


async def test_exports_are_rate_limited_per_user(make_client):
    client = await make_client(rate_limit_export="1/3600")
    pair = await register(client)
    assert (await client.get(EXPORT, headers=_bearer(pair))).status == 200
    refused = await client.get(EXPORT, headers=_bearer(pair))
    assert refused.status == 429
    assert (await refused.json())["error"]["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) > 0
    # Another user has a limit of their own; a refused export is not logged as one.
    assert (await client.get(EXPORT, headers=_bearer(await register(client)))).status == 200
    audit = await _json(client, pair, "/api/v1/users/me/audit")
    assert [e["action"] for e in audit].count("account.exported") == 1
    assert (await client.get(EXPORT)).status == 401


async def test_an_error_midway_cuts_the_connection(client, caplog):
    """A document whose stored bytes do not load, after one that does: the status was
    sent, so the body is cut short rather than finished as if whole."""
    pair = await register(client)
    user_id = uuid.UUID(pair["user"]["id"])
    update_log = client.server.app[UPDATE_LOG]
    good, broken = await update_log.create_documents([(user_id, "a-good"),
                                                      (user_id, "b-broken")])
    assert good is not None and broken is not None
    await update_log.append_many([good, broken], [
        _edit(Doc(), lambda d: d.get("weights", type=Map).__setitem__("k", Map({"w": 1.0}))),
        b"\x05not an update"])

    resp = await client.get(EXPORT, headers=_bearer(pair))
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    assert any("failed after it started" in r.getMessage() for r in caplog.records)


# -- modi-sync user export ----------------------------------------------------------------


async def test_the_command_writes_the_same_export(services, client, pool, tmp_path: Path):
    pair, socket = await _account_with_data(client, pool)
    await socket.disconnect()
    output = tmp_path / "export.json"
    code, out, err = await run_cli_raw(services, "user", "export", pair["user"]["email"],
                                "--output", str(output))
    assert code == 0, err
    assert out == b""
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    data = orjson.loads(output.read_bytes())["data"]
    assert data["profile"]["id"] == pair["user"]["id"]
    assert [d["name"] for d in data["documents"]] == ["log", "plan"]
    for exported in data["documents"]:
        live = await _json(client, pair, f"/api/v1/docs/{exported['name']}")
        assert _roots(_rebuilt(exported["update"])) == live == exported["content"]
    [food] = data["foods"]
    assert food["name"] == "Oat bar"
    assert data["audit"][-1]["action"] == "account.exported"
    assert data["audit"][-1]["request_id"].startswith("user-export-")
    assert data["audit"][-1]["ip"] is None

    # By id, to stdout.
    code, out, err = await run_cli_raw(services, "user", "export", pair["user"]["id"])
    assert code == 0, err
    by_id = orjson.loads(out)["data"]
    assert by_id["profile"] == data["profile"]
    assert by_id["documents"] == data["documents"]
    assert [e["action"] for e in by_id["audit"]].count("account.exported") == 2


async def test_the_command_says_when_there_is_no_such_account(services, tmp_path: Path):
    output = tmp_path / "nobody.json"
    code, out, err = await run_cli_raw(services, "user", "export", "nobody@example.com",
                                "--output", str(output))
    assert code == 3
    assert "no account nobody@example.com" in err
    assert out == b"" and not output.exists()
