"""The food routes other than search's relevance (tests/test_food_search.py):
lookups, barcodes, contributions, moderation, the recent and popular lists, and the
cache's invalidation (docs/foods.md)."""

from __future__ import annotations

import uuid

import pytest

from modi_sync.barcodes import normalize_barcode
from modi_sync.errors import Invalid
from modi_sync.foods import new_food

from .conftest import Client, register, unique_gtin13

FOODS = "/api/v1/foods"
PASSWORD = "correct horse"


def _bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


async def _data(resp, status: int = 200):
    assert resp.status == status, await resp.text()
    return (await resp.json())["data"]


async def _error(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


def _gtin(body: str) -> str:
    """``body`` with its GS1 check digit."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def _food(name: str | None = None, **changes) -> dict:
    # 20 g protein, 10 g carbs, 5 g fat: 165 kcal by Atwater's factors.
    return {"name": f"Test food {uuid.uuid4().hex[:8]}" if name is None else name,
            "calories": 165,
            "protein": 20, "carbs": 10, "fat": 5} | changes


async def _admin(client: Client, db) -> dict:
    pair = await register(client, password=PASSWORD)
    await db.execute("UPDATE users SET role = 'admin' WHERE id = $1", uuid.UUID(pair["user"]["id"]))
    resp = await client.post("/api/v1/auth/login",
                             json={"email": pair["user"]["email"], "password": PASSWORD})
    return await _data(resp)


# -- barcodes --------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["4006381333931", "96385074", "036000291452"])
def test_valid_barcodes_are_kept_in_their_stored_form(code):
    assert normalize_barcode(code) == code.zfill(13 if len(code) == 12 else len(code))


@pytest.mark.parametrize("code", ["4006381333932", "96385075", "036000291453", "12345",
                                  "40063813339310", "4OO6381333931", "٤٠٠٦٣٨١٣٣٣٩٣١", ""])
def test_invalid_barcodes_are_refused(code):
    with pytest.raises(ValueError):
        normalize_barcode(code)


async def test_a_upc_a_and_its_ean_13_form_find_the_same_food(client):
    pair = await register(client)
    upc = _gtin("0" + str(uuid.uuid4().int)[:10])  # 12 digits
    made = await _data(await client.post(FOODS, json=_food(barcode=upc), headers=_bearer(pair)),
                       201)
    assert made["barcode"] == "0" + upc
    for code in (upc, "0" + upc):
        found = await _data(await client.get(f"{FOODS}/barcode/{code}", headers=_bearer(pair)))
        assert found["id"] == made["id"]


async def test_a_bad_check_digit_is_400_and_an_unknown_barcode_404(client):
    pair = await register(client)
    good = unique_gtin13()
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    error = await _error(await client.get(f"{FOODS}/barcode/{bad}", headers=_bearer(pair)), 400)
    assert error["details"]["field"] == "code"
    await _error(await client.get(f"{FOODS}/barcode/{good}", headers=_bearer(pair)), 404)
    await _error(await client.get(f"{FOODS}/barcode/{good}"), 401)


# -- contributions --------------------------------------------------------------------


async def test_a_contribution_starts_unverified_and_its_author_sees_it_at_once(client):
    pair = await register(client)
    name = f"Grandma's flapjack {uuid.uuid4().hex[:6]}"
    made = await _data(await client.post(FOODS, json=_food(name, brand="Home"),
                                         headers=_bearer(pair)), 201)
    assert made["verified"] is False
    assert (made["name"], made["brand"], made["calories"]) == (name, "Home", 165.0)
    got = await _data(await client.get(f"{FOODS}/{made['id']}", headers=_bearer(pair)))
    assert got == made
    found = await _data(await client.get(f"{FOODS}/search", params={"q": name},
                                         headers=_bearer(pair)))
    assert [f["id"] for f in found][:1] == [made["id"]]


async def test_others_see_an_unverified_food_only_below_verified_matches(client, db):
    word = "zq" + uuid.uuid4().hex[:8]  # a word no other food has (others' may be its
    # typo corrections: only these two foods are looked at)
    author, other, admin = await register(client), await register(client), await _admin(client, db)
    mine = await _data(await client.post(FOODS, json=_food(f"{word} bar"),
                                         headers=_bearer(author)), 201)
    # A verified food that matches less well: the word is in its brand only (weight C).
    theirs = await _data(await client.post(FOODS, json=_food("Plain bar", brand=word),
                                           headers=_bearer(other)), 201)
    await _data(await client.post(f"{FOODS}/{theirs['id']}/verify", headers=_bearer(admin)))

    async def order(pair: dict) -> list[str]:
        found = await client.get(f"{FOODS}/search", params={"q": word}, headers=_bearer(pair))
        return [f["id"] for f in await _data(found) if f["id"] in (mine["id"], theirs["id"])]

    assert await order(author) == [mine["id"], theirs["id"]]  # by relevance, as if verified
    assert await order(other) == [theirs["id"], mine["id"]]  # verified first


async def test_a_duplicate_barcode_is_409(client):
    pair = await register(client)
    code = unique_gtin13()
    await _data(await client.post(FOODS, json=_food(barcode=code), headers=_bearer(pair)), 201)
    error = await _error(await client.post(FOODS, json=_food(barcode=code),
                                           headers=_bearer(pair)), 409)
    assert error["code"] == "CONFLICT"


@pytest.mark.parametrize("changes, field", [
    ({"protein": -1, "calories": 156}, "protein"),
    ({"protein": 60, "carbs": 30, "fat": 20, "calories": 540}, "body"),  # 110 g per 100 g
    ({"calories": 400}, "calories"),  # the macros give 165
    ({"calories": 0}, "calories"),
    ({"calories": 901, "fat": 100, "protein": 0, "carbs": 0}, "calories"),
    ({"fat": float("inf")}, "fat"),
    ({"carbs": "10"}, "carbs"),
    ({"carbs": True}, "carbs"),
    ({"name": ""}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "nul\x00"}, "name"),
    ({"brand": 7}, "brand"),
    ({"barcode": "4006381333932"}, "barcode"),
])
def test_values_outside_physical_bounds_are_refused(changes, field):
    with pytest.raises(Invalid) as caught:
        new_food(_food(**changes))
    assert caught.value.field == field


@pytest.mark.parametrize("changes", [
    {},
    {"calories": 140},  # 15% under the factors: rounding and fibre
    {"calories": 0, "protein": 0, "carbs": 0, "fat": 0},  # water
    {"calories": 884, "protein": 0, "carbs": 0, "fat": 100},  # oil
])
def test_real_foods_are_accepted(changes):
    assert new_food(_food(**changes)).calories == _food(**changes)["calories"]


async def test_a_refused_contribution_is_400_in_the_envelope_and_stores_nothing(client, db):
    pair = await register(client)
    before = await db.fetchval("SELECT count(*) FROM foods")
    error = await _error(await client.post(FOODS, json=_food(protein=-5),
                                           headers=_bearer(pair)), 400)
    assert (error["code"], error["details"]["field"]) == ("VALIDATION_ERROR", "protein")
    await _error(await client.post(FOODS, data=b"{not json", headers=_bearer(pair)
                                   | {"Content-Type": "application/json"}), 400)
    assert await db.fetchval("SELECT count(*) FROM foods") == before


# -- moderation -----------------------------------------------------------------------


async def test_only_an_admin_verifies(client, db):
    author, admin = await register(client), await _admin(client, db)
    made = await _data(await client.post(FOODS, json=_food(), headers=_bearer(author)), 201)
    verify = f"{FOODS}/{made['id']}/verify"
    assert (await _error(await client.post(verify, headers=_bearer(author)), 403))["code"] \
        == "FORBIDDEN"
    verified = await _data(await client.post(verify, headers=_bearer(admin)))
    assert verified["verified"] is True
    await _error(await client.post(f"{FOODS}/{uuid.uuid4()}/verify", headers=_bearer(admin)),
                 404)


async def test_an_unknown_or_malformed_food_id(client):
    pair = await register(client)
    await _error(await client.get(f"{FOODS}/{uuid.uuid4()}", headers=_bearer(pair)), 404)
    await _error(await client.get(f"{FOODS}/not-an-id", headers=_bearer(pair)), 404)
    await _error(await client.get(f"{FOODS}/{'f' * 31}--", headers=_bearer(pair)), 400)


# -- recent, popular, cache -----------------------------------------------------------


async def test_recent_lists_the_newest_verified_foods(client, db):
    author, admin = await register(client), await _admin(client, db)
    made = [await _data(await client.post(FOODS, json=_food(), headers=_bearer(author)), 201)
            for _ in range(3)]
    for food in made[:2]:
        await _data(await client.post(f"{FOODS}/{food['id']}/verify", headers=_bearer(admin)))
    resp = await client.get(f"{FOODS}/recent", params={"limit": 100}, headers=_bearer(author))
    assert resp.status == 200
    body = await resp.json()
    ids = [f["id"] for f in body["data"]]
    assert ids[:2] == [made[1]["id"], made[0]["id"]]  # newest first
    assert made[2]["id"] not in ids  # unverified
    assert all(f["verified"] for f in body["data"])
    assert body["pagination"]["total"] >= 2


async def test_a_cached_search_changes_with_the_food_table(client, db):
    word = "zq" + uuid.uuid4().hex[:8]  # others' such words may be its typo corrections
    author, admin = await register(client), await _admin(client, db)

    async def names() -> dict[str, str]:
        found = await client.get(f"{FOODS}/search", params={"q": word}, headers=_bearer(admin))
        return {f["id"]: f["name"] for f in await _data(found)}

    assert not any(word in name for name in (await names()).values())  # now cached
    made = await _data(await client.post(FOODS, json=_food(f"{word} soup"),
                                         headers=_bearer(author)), 201)
    assert (await names()).get(made["id"]) == made["name"]
    await db.execute("UPDATE foods SET name = $1 WHERE id = $2", f"{word} stew",
                     uuid.UUID(made["id"]))
    # A write behind the server's back: the cached answer stands.
    assert (await names()).get(made["id"]) == made["name"]
    await _data(await client.post(f"{FOODS}/{made['id']}/verify", headers=_bearer(admin)))
    assert (await names()).get(made["id"]) == f"{word} stew"  # verifying bumped the version


async def test_a_user_has_at_most_so_many_foods_waiting_for_verification(client, db,
                                                                         monkeypatch):
    monkeypatch.setattr("modi_sync.foods.PENDING_PER_USER", 2)
    pair, admin = await register(client), await _admin(client, db)
    made = [await _data(await client.post(FOODS, json=_food(), headers=_bearer(pair)), 201)
            for _ in range(2)]
    error = await _error(await client.post(FOODS, json=_food(), headers=_bearer(pair)), 413)
    assert error["code"] == "PAYLOAD_TOO_LARGE"
    await _data(await client.post(f"{FOODS}/{made[0]['id']}/verify", headers=_bearer(admin)))
    await _data(await client.post(FOODS, json=_food(), headers=_bearer(pair)), 201)
