"""The shared food database: ``foods``, its search (docs/foods.md, "Search"), barcodes,
contributions and their moderation."""

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
# Nothing is inserted once the author has $9 foods waiting for verification (a quota:
# two contributions at the same moment may pass it by one).
_INSERT = """
INSERT INTO foods (name, brand, barcode, calories, protein, carbs, fat, created_by)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE (SELECT count(*) FROM foods WHERE created_by = $8 AND NOT verified) < $9
RETURNING id, name, brand, barcode, calories, protein, carbs, fat, created_by, verified,
          created_at
"""
_BY_AUTHOR = "SELECT" + _COLUMNS + """
FROM foods WHERE created_by = $1 AND id > $2 ORDER BY id LIMIT $3
"""
_VERIFY = """
UPDATE foods SET verified = true, verified_at = now(), updated_at = now()
WHERE id = $1 RETURNING""" + _COLUMNS
_GET = "SELECT" + _COLUMNS + "FROM foods WHERE id = $1"
_BY_BARCODE = "SELECT" + _COLUMNS + "FROM foods WHERE barcode = $1"
# Pages come with the count of all that match: one row even past the last page,
# its food columns NULL.
_RECENT = """
SELECT f.id, f.name, f.brand, f.barcode, f.calories, f.protein, f.carbs, f.fat,
       f.created_by, f.verified, f.created_at, c.count
FROM (SELECT count(*) FROM foods WHERE verified) c
LEFT JOIN LATERAL (SELECT * FROM foods WHERE verified
                   ORDER BY created_at DESC, id LIMIT $1 OFFSET $2) f ON true
ORDER BY f.created_at DESC, f.id
"""
_MANY = "SELECT" + _COLUMNS + "FROM foods WHERE id = ANY($1::uuid[])"
_HAS_UNVERIFIED = """
SELECT EXISTS (SELECT 1 FROM foods WHERE created_by = $1 AND NOT verified)
"""

# Each query word as the index holds it (stemmed, accents off; NULL for a stop word),
# whether it starts any known lexeme, and if not, the known lexemes nearest to it by
# trigram similarity (at most $2, and none much farther than the nearest): its likely
# corrections. The vocabulary is small (one row per distinct lexeme), so this costs
# far less than a similarity scan of every food.
_WORDS = """
SELECT l.lexeme, k.known,
       CASE WHEN l.lexeme IS NULL OR k.known THEN '{}'::text[]
            ELSE ARRAY(SELECT word FROM (
                     SELECT f.word, similarity(f.word, l.lexeme) AS near,
                            max(similarity(f.word, l.lexeme)) OVER () AS nearest
                     FROM food_words f WHERE f.word % l.lexeme
                     ORDER BY near DESC, f.word LIMIT $2) c
                 WHERE near >= nearest - 0.05)
       END AS near
FROM unnest($1::text[]) WITH ORDINALITY AS w(word, o)
CROSS JOIN LATERAL (
    SELECT (tsvector_to_array(to_tsvector('food_search', w.word)))[1] AS lexeme) l
CROSS JOIN LATERAL (
    SELECT EXISTS (SELECT 1 FROM food_words f
                   WHERE f.word >= l.lexeme AND f.word < l.lexeme || chr(1114111)) AS known) k
ORDER BY w.o
"""

# Verified foods first (and the caller's own contributions, as if verified), then by
# rank: words found whole ($2) over words found as prefixes or corrections ($1 only),
# a match in the food's own name (weight A) over one in the rest of the name (B) or
# the brand (C), a short name over a long one (normalisation 1).
_SEARCH = """
WITH matches AS MATERIALIZED (
    SELECT id, verified OR coalesce(created_by = $3, false) AS shown_first,
           ts_rank(search_vector, $1::tsquery, 1)
           + 2 * ts_rank(search_vector, $2::tsquery, 1) AS rank,
           length(name) AS length
    FROM foods WHERE search_vector @@ $1::tsquery
), page AS (
    SELECT * FROM matches ORDER BY shown_first DESC, rank DESC, length, id
    LIMIT $4 OFFSET $5
)
SELECT f.id, f.name, f.brand, f.barcode, f.calories, f.protein, f.carbs, f.fat,
       f.created_by, f.verified, f.created_at, c.count
FROM (SELECT count(*) FROM matches) c
LEFT JOIN (page JOIN foods f USING (id)) ON true
ORDER BY page.shown_first DESC, page.rank DESC, page.length, page.id
"""
# Erasure: unverified contributions go; verified ones stay, their author forgotten by
# the users row's ON DELETE SET NULL.
_DROP_UNVERIFIED = "DELETE FROM foods WHERE created_by = $1 AND NOT verified"


def _food(row: asyncpg.Record) -> Food:
    return Food(*row[:_FIELDS])


_FIELDS = len(Food.__dataclass_fields__)


class DuplicateBarcode(Exception):
    """Another food has this barcode."""


@dataclass(frozen=True, slots=True)
class QueryWord:
    lexeme: str | None  # None: a stop word
    known: bool  # some food's lexeme starts with it
    near: list[str]  # if not known: the nearest known lexemes


def _page(rows: list[asyncpg.Record]) -> tuple[list[Food], int]:
    return [_food(r) for r in rows if r["id"] is not None], rows[0]["count"]


async def drop_unverified(conn: asyncpg.Connection, user_id: UUID) -> int:
    status: str = await conn.execute(_DROP_UNVERIFIED, user_id)
    return int(status.split()[-1])


class FoodStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def contribute(self, user_id: UUID, food: NewFood, pending_at_most: int) -> Food | None:
        """The new food, or None if the author has ``pending_at_most`` unverified."""
        try:
            row = await self._pool.fetchrow(
                _INSERT, food.name, food.brand, food.barcode, food.calories, food.protein,
                food.carbs, food.fat, user_id, pending_at_most)
        except asyncpg.UniqueViolationError:
            raise DuplicateBarcode(food.barcode) from None
        return None if row is None else _food(row)

    async def verify(self, food_id: UUID) -> Food | None:
        row = await self._pool.fetchrow(_VERIFY, food_id)
        return None if row is None else _food(row)

    async def get(self, food_id: UUID) -> Food | None:
        row = await self._pool.fetchrow(_GET, food_id)
        return None if row is None else _food(row)

    async def many(self, food_ids: list[UUID]) -> dict[UUID, Food]:
        return {f.id: f for f in map(_food, await self._pool.fetch(_MANY, food_ids))}

    async def by_barcode(self, barcode: str) -> Food | None:
        row = await self._pool.fetchrow(_BY_BARCODE, barcode)
        return None if row is None else _food(row)

    async def recent(self, limit: int, offset: int) -> tuple[list[Food], int]:
        """The newest verified foods, and how many verified foods there are."""
        return _page(await self._pool.fetch(_RECENT, limit, offset))

    async def has_unverified(self, user_id: UUID) -> bool:
        return bool(await self._pool.fetchval(_HAS_UNVERIFIED, user_id))

    async def query_words(self, words: list[str], corrections: int) -> list[QueryWord]:
        rows = await self._pool.fetch(_WORDS, words, corrections)
        return [QueryWord(r["lexeme"], r["known"], list(r["near"])) for r in rows]

    async def search(self, match: str, exact: str, viewer: UUID | None, limit: int,
                     offset: int) -> tuple[list[Food], int]:
        """A page of the foods matching ``match``, ranked higher for each lexeme of
        ``exact`` they hold (both tsquery syntax, built by the caller from lexemes
        only), and how many match. ``viewer``'s own unverified contributions rank as
        if verified."""
        return _page(await self._pool.fetch(_SEARCH, match, exact, viewer, limit, offset))

    async def by_author(self, user_id: UUID, after: UUID | None, limit: int) -> list[Food]:
        """At most ``limit`` of the user's contributions, by id, past ``after``."""
        rows = await self._pool.fetch(_BY_AUTHOR, user_id, after or _NO_ID, limit)
        return [_food(r) for r in rows]
