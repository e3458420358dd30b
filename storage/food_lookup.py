"""The nutrients of many foods at once, for the daily summary: one query, whatever the
number of foods a day's log names."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

import asyncpg

_NUTRIENTS = "SELECT id, calories, protein, carbs, fat FROM foods WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True, slots=True)
class Nutrients:
    """Per 100 g: kcal, and grams of each macronutrient."""

    calories: Decimal
    protein: Decimal
    carbs: Decimal
    fat: Decimal


async def nutrients_of(pool: asyncpg.Pool, food_ids: Collection[UUID]) -> dict[UUID, Nutrients]:
    """The foods of ``food_ids`` that exist, by id."""
    if not food_ids:
        return {}
    rows = await pool.fetch(_NUTRIENTS, list(food_ids))
    return {r["id"]: Nutrients(r["calories"], r["protein"], r["carbs"], r["fat"]) for r in rows}
