"""The daily summary: calories and macronutrients of one day's ``food_logs`` in one of
the user's documents, per meal and in total (docs/foods.md, "The daily summary").

The document is read through the documents service, like every read of a user's
document; the foods of the day are read in one query, whatever their number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from uuid import UUID

from storage.foods import Food, FoodStore

from .documents import Documents
from .food_log_entries import TIME_FIELDS, entry_day, food_uuid, quantity_g

OTHER_MEAL = "other"  # an entry with no meal type, or one that is not a short string
_MAX_MEAL_TYPE = 64
MAX_UNKNOWN_LISTED = 100  # unknown food ids named in an answer; the rest are counted


@dataclass(frozen=True, slots=True)
class _Entry:
    meal: str
    food_id: str
    grams: float


@dataclass(slots=True)
class _Totals:
    calories: float = 0.0
    protein: float = 0.0
    carbs: float = 0.0
    fat: float = 0.0
    entries: int = 0

    def add(self, grams: float, food: Food) -> None:
        share = grams / 100
        self.calories += share * float(food.calories)
        self.protein += share * float(food.protein)
        self.carbs += share * float(food.carbs)
        self.fat += share * float(food.fat)
        self.entries += 1

    def as_json(self) -> dict[str, Any]:
        # One decimal: a food's values are known to 0.01 per 100 g at best, and a
        # phone shows whole kcal and grams anyway.
        return {"calories": round(self.calories, 1), "protein": round(self.protein, 1),
                "carbs": round(self.carbs, 1), "fat": round(self.fat, 1),
                "entries": self.entries}


@dataclass(slots=True)
class _Day:
    """A day's entries as read, before the foods are looked up."""

    entries: list[_Entry] = field(default_factory=list)
    skipped: int = 0


async def daily_summary(documents: Documents, foods: FoodStore, user_id: UUID, name: str,
                        day: date) -> dict[str, Any]:
    """The summary of ``day`` in the user's document ``name``; NotFound if it has none."""
    read = _Day()
    async for entries in documents.entries(user_id, name, "food_logs"):
        entries_of(entries, day, read)
    known = await foods.many(list({i for e in read.entries if (i := food_uuid(e.food_id))}))
    return summarize(read, known) | {"date": day.isoformat(), "doc": name}


def entries_of(food_logs: list[Any], day: date, read: _Day) -> None:
    """Adds the entries of ``day`` to ``read``; those of the day with no food id or no
    usable quantity are counted as skipped."""
    wanted = day.isoformat()
    for entry in food_logs:
        if not isinstance(entry, Mapping):
            continue
        # Most entries carry only ``date``: a string compare, no parsing, for those.
        if any(field in entry for field in TIME_FIELDS):
            if entry_day(entry) != day:
                continue
        elif entry.get("date") != wanted:
            continue
        food_id, grams = entry.get("food_id"), quantity_g(entry)
        if not isinstance(food_id, str) or not food_id or grams is None:
            read.skipped += 1
            continue
        read.entries.append(_Entry(_meal(entry.get("meal_type")), food_id, grams))


def _meal(value: Any) -> str:
    if isinstance(value, str) and 0 < len(value) <= _MAX_MEAL_TYPE:
        return value
    return OTHER_MEAL


def summarize(read: _Day, foods: Mapping[UUID, Food]) -> dict[str, Any]:
    total, meals, unknown = _Totals(), dict[str, _Totals](), set[str]()
    for entry in read.entries:
        food_id = food_uuid(entry.food_id)
        food = foods.get(food_id) if food_id is not None else None
        if food is None:
            unknown.add(entry.food_id)
            continue
        total.add(entry.grams, food)
        meals.setdefault(entry.meal, _Totals()).add(entry.grams, food)
    listed = sorted(unknown)
    return {
        "total": total.as_json(),
        "meals": {meal: totals.as_json() for meal, totals in sorted(meals.items())},
        "unknown_food_ids": [i[:64] for i in listed[:MAX_UNKNOWN_LISTED]],
        "unknown_food_ids_total": len(listed),
        "skipped": read.skipped,
    }
