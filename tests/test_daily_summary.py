"""GET /api/v1/food-logs/daily-summary (modi_sync/food_summary.py): one day's food log in
the caller's document, summed per meal and in total against the foods table."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from pycrdt import Doc, Map

from modi_sync.app_keys import DOCUMENTS

from .conftest import Client, register

DAY = "2030-03-01"
ROUTE = "/api/v1/food-logs/daily-summary"


async def _food(db: asyncpg.Connection, calories: str, protein: str, carbs: str,
                fat: str) -> str:
    food_id = await db.fetchval(
        "INSERT INTO foods (name, calories, protein, carbs, fat) VALUES"
        " ('summary test food', $1, $2, $3, $4) RETURNING id",
        Decimal(calories), Decimal(protein), Decimal(carbs), Decimal(fat))
    return str(food_id)


async def _user(client: Client) -> tuple[uuid.UUID, dict[str, str]]:
    account = await register(client)
    return (uuid.UUID(account["user"]["id"]),
            {"Authorization": f"Bearer {account['access_token']}"})


async def _write(client: Client, user_id: uuid.UUID, entries: list[Any],
                 name: str = "default") -> None:
    """A document whose food_logs holds ``entries`` (a map each, or anything else)."""
    doc: Doc = Doc()
    logs = doc.get("food_logs", type=Map)
    with doc.transaction():
        for entry in entries:
            logs[str(uuid.uuid4())] = Map(entry) if isinstance(entry, dict) else entry
    await client.app[DOCUMENTS].apply(user_id, name, doc.get_update())


def _entry(food_id: Any, grams: Any, meal: str = "lunch", date: str = DAY,
           **fields: Any) -> dict[str, Any]:
    return {"food_id": food_id, "quantity_g": grams, "meal_type": meal, "date": date, **fields}


async def _summary(client: Client, headers: dict[str, str], **query: str) -> dict[str, Any]:
    resp = await client.get(ROUTE, params={"date": DAY, **query}, headers=headers)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["data"]


async def test_sums_per_meal_and_in_total(client, db):
    oats = await _food(db, "389", "16.9", "66.3", "6.9")
    milk = await _food(db, "42", "3.4", "5", "1")
    chicken = await _food(db, "165", "31", "0", "3.6")
    user_id, headers = await _user(client)
    await _write(client, user_id, [
        _entry(oats, 40, "breakfast"), _entry(milk, 200.0, "breakfast"),
        _entry(chicken, 150, "dinner"), _entry(oats, 25.5, "dinner"),
    ])
    summary = await _summary(client, headers)
    # By hand: oats 40 g = 155.6 kcal, 6.76 P, 26.52 C, 2.76 F; milk 200 g = 84, 6.8,
    # 10, 2; chicken 150 g = 247.5, 46.5, 0, 5.4; oats 25.5 g = 99.195, 4.3095,
    # 16.9065, 1.7595.
    assert summary["meals"] == {
        "breakfast": {"calories": 239.6, "protein": 13.6, "carbs": 36.5, "fat": 4.8,
                      "entries": 2},
        "dinner": {"calories": 346.7, "protein": 50.8, "carbs": 16.9, "fat": 7.2,
                   "entries": 2},
    }
    assert summary["total"] == {"calories": 586.3, "protein": 64.4, "carbs": 53.4,
                                "fat": 11.9, "entries": 4}
    assert summary["date"] == DAY and summary["doc"] == "default"
    assert summary["unknown_food_ids"] == [] and summary["skipped"] == 0


async def test_unknown_foods_are_listed_and_bad_quantities_skipped(client, db):
    rice = await _food(db, "130", "2.7", "28", "0.3")
    missing = str(uuid.uuid4())
    user_id, headers = await _user(client)
    await _write(client, user_id, [
        _entry(rice, 100), _entry(missing, 100), _entry("my own pancake", 80),
        _entry(rice, -5), _entry(rice, "lots"), _entry(rice, None), _entry(rice, True),
        _entry(None, 100), {"food_id": rice, "date": DAY},
        "not a map", 17,
        _entry(rice, 1e300),
    ])
    summary = await _summary(client, headers)
    assert summary["total"] == {"calories": 130.0, "protein": 2.7, "carbs": 28.0,
                                "fat": 0.3, "entries": 1}
    assert summary["unknown_food_ids"] == sorted([missing, "my own pancake"])
    assert summary["unknown_food_ids_total"] == 2
    assert summary["skipped"] == 7


async def test_other_days_are_left_out_and_a_time_counts_in_its_own_offset(client, db):
    bread = await _food(db, "250", "9", "49", "3.2")
    user_id, headers = await _user(client)
    await _write(client, user_id, [
        _entry(bread, 100),
        _entry(bread, 1000, date="2030-02-28"),
        _entry(bread, 1000, date="2030-03-02"),
        # 23:30 in New York on 1 March is 2 March in UTC: it is the user's 1 March.
        _entry(bread, 10, "snack", date="2030-03-02", logged_at="2030-03-01T23:30:00-05:00"),
        # 00:30 in Tokyo on 2 March is 1 March in UTC: not the user's 1 March.
        _entry(bread, 1000, "snack", date="2030-03-01", logged_at="2030-03-02T00:30:00+09:00"),
        # The weights' field name, in UTC.
        _entry(bread, 20, "snack", date="garbage", date_time="2030-03-01T12:00:00Z"),
        # A time without an offset names no day: its date stands.
        _entry(bread, 30, "snack", logged_at="2030-03-05T10:00:00"),
    ])
    summary = await _summary(client, headers)
    assert summary["meals"]["lunch"]["calories"] == 250.0
    assert summary["meals"]["snack"] == {"calories": 150.0, "protein": 5.4, "carbs": 29.4,
                                         "fat": 1.9, "entries": 3}
    assert summary["total"]["entries"] == 4


async def test_an_empty_day_and_a_named_document(client, db):
    egg = await _food(db, "155", "13", "1.1", "11")
    user_id, headers = await _user(client)
    await _write(client, user_id, [_entry(egg, 60)], name="diary-2")
    summary = await _summary(client, headers, doc="diary-2")
    assert summary["total"]["calories"] == 93.0 and summary["doc"] == "diary-2"
    summary = await _summary(client, headers, doc="diary-2", date="2030-03-02")
    assert summary["total"] == {"calories": 0.0, "protein": 0.0, "carbs": 0.0, "fat": 0.0,
                                "entries": 0}
    assert summary["meals"] == {}


async def test_another_users_document_is_never_read(client, db):
    egg = await _food(db, "155", "13", "1.1", "11")
    owner_id, owner_headers = await _user(client)
    _, other_headers = await _user(client)
    await _write(client, owner_id, [_entry(egg, 100)])
    assert (await _summary(client, owner_headers))["total"]["calories"] == 155.0
    # The other user names the same document: theirs, which does not exist.
    resp = await client.get(ROUTE, params={"date": DAY}, headers=other_headers)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"
    resp = await client.get(ROUTE, params={"date": DAY, "doc": f"../{owner_id}/default"},
                            headers=other_headers)
    assert resp.status == 400


@pytest.mark.parametrize("query", [{}, {"date": "2030-3-1"}, {"date": "2030-02-30"},
                                   {"date": "tomorrow"}, {"date": "2030-03-01T00:00:00Z"},
                                   {"date": DAY, "doc": ""}, {"date": DAY, "doc": "a/b"}])
async def test_a_bad_date_or_name_is_a_validation_error(client, query):
    _, headers = await _user(client)
    resp = await client.get(ROUTE, params=query, headers=headers)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["field"] in ("date", "doc")


async def test_a_token_is_required(client):
    resp = await client.get(ROUTE, params={"date": DAY})
    assert resp.status == 401


async def test_five_thousand_entries_are_summed(client, db):
    foods = [await _food(db, "100", "10", "10", "1") for _ in range(50)]
    user_id, headers = await _user(client)
    await _write(client, user_id, [
        _entry(foods[n % 50], 10, ("breakfast", "lunch", "dinner", "snack")[n % 4],
               date=DAY if n % 2 == 0 else "2030-03-02")
        for n in range(5000)])
    summary = await _summary(client, headers)
    assert summary["total"] == {"calories": 25000.0, "protein": 2500.0, "carbs": 2500.0,
                                "fat": 250.0, "entries": 2500}
    assert set(summary["meals"]) == {"breakfast", "dinner"}  # even n: meals 0 and 2
