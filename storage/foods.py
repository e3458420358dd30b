"""The shared food database: ``foods``. What the GDPR actions need of it for now: a
user's contributions, read for the export and settled at erasure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

_NO_ID = UUID(int=0)


@dataclass(frozen=True, slots=True)
class Food:
    id: UUID
    name: str
    brand: str | None
    barcode: str | None
    calories: Decimal
    protein: Decimal
    carbs: Decimal
    fat: Decimal
    created_by: UUID | None
    verified: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NewFood:
    name: str
    calories: Decimal
    protein: Decimal
    carbs: Decimal
    fat: Decimal
    brand: str | None = None
    barcode: str | None = None


_COLUMNS = """
id, name, brand, barcode, calories, protein, carbs, fat, created_by, verified, created_at
"""
_INSERT = """
INSERT INTO foods (name, brand, barcode, calories, protein, carbs, fat, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING""" + _COLUMNS
_BY_AUTHOR = "SELECT" + _COLUMNS + """
FROM foods WHERE created_by = $1 AND id > $2 ORDER BY id LIMIT $3
"""
_VERIFY = "UPDATE foods SET verified = true, verified_at = now(), updated_at = now() " \
          "WHERE id = $1"
# Erasure: unverified contributions go; verified ones stay, their author forgotten by
# the users row's ON DELETE SET NULL.
_DROP_UNVERIFIED = "DELETE FROM foods WHERE created_by = $1 AND NOT verified"


def _food(row: asyncpg.Record) -> Food:
    return Food(**dict(row))


async def drop_unverified(conn: asyncpg.Connection, user_id: UUID) -> int:
    status: str = await conn.execute(_DROP_UNVERIFIED, user_id)
    return int(status.split()[-1])


class FoodStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def contribute(self, user_id: UUID, food: NewFood) -> Food:
        return _food(await self._pool.fetchrow(
            _INSERT, food.name, food.brand, food.barcode, food.calories, food.protein,
            food.carbs, food.fat, user_id))

    async def verify(self, food_id: UUID) -> bool:
        status: str = await self._pool.execute(_VERIFY, food_id)
        return status == "UPDATE 1"

    async def by_author(self, user_id: UUID, after: UUID | None, limit: int) -> list[Food]:
        """At most ``limit`` of the user's contributions, by id, past ``after``."""
        rows = await self._pool.fetch(_BY_AUTHOR, user_id, after or _NO_ID, limit)
        return [_food(r) for r in rows]
