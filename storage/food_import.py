"""Importing foods from a file: the SQL of ``modi-sync foods import`` (docs/foods.md,
"Importing").

An import is one transaction. Checked rows are staged in batches (COPY) into a
temporary table; what can only be checked across rows (a key or a barcode given twice,
a barcode another food holds) is checked there; then one upsert keyed on
``(source, source_id)`` writes them. A row whose stored values are already the ones
given is not touched (``IS DISTINCT FROM``), so importing a file again changes nothing.
Leaving the block without ``apply`` rolls everything back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import astuple, dataclass, fields
from decimal import Decimal

import asyncpg

_STAGE = """
CREATE TEMPORARY TABLE food_import_rows (
    line      bigint PRIMARY KEY,
    source    text NOT NULL,
    source_id text NOT NULL,
    name      text NOT NULL,
    brand     text,
    barcode   text,
    -- The foods table's precision: a value is compared as it will be stored.
    calories  numeric(10, 2) NOT NULL,
    protein   numeric(10, 2) NOT NULL,
    carbs     numeric(10, 2) NOT NULL,
    fat       numeric(10, 2) NOT NULL
) ON COMMIT DROP
"""

# Every row after the first with one key or one barcode, and every barcode that
# belongs to another food already (the unique index would stop the upsert).
_CONFLICTS = """
SELECT line, 'source_id' AS field, source_id AS value, first
FROM (SELECT line, source_id,
             min(line) OVER (PARTITION BY source, source_id) AS first
      FROM food_import_rows) AS keyed
WHERE line <> first
UNION ALL
SELECT line, 'barcode', barcode, first
FROM (SELECT line, barcode, min(line) OVER (PARTITION BY barcode) AS first
      FROM food_import_rows WHERE barcode IS NOT NULL) AS coded
WHERE line <> first
UNION ALL
SELECT s.line, 'barcode', s.barcode, NULL
FROM food_import_rows AS s JOIN foods AS f ON f.barcode = s.barcode
WHERE (f.source, f.source_id) IS DISTINCT FROM (s.source, s.source_id)
ORDER BY 1
"""

_DISCARD = "DELETE FROM food_import_rows WHERE line = ANY($1::bigint[])"

_UPSERT = """
WITH written AS (
    INSERT INTO foods AS f (source, source_id, name, brand, barcode,
                            calories, protein, carbs, fat, verified, verified_at)
    SELECT source, source_id, name, brand, barcode, calories, protein, carbs, fat,
           true, now()
    FROM food_import_rows ORDER BY line
    ON CONFLICT (source, source_id) DO UPDATE SET
        name = EXCLUDED.name, brand = EXCLUDED.brand, barcode = EXCLUDED.barcode,
        calories = EXCLUDED.calories, protein = EXCLUDED.protein,
        carbs = EXCLUDED.carbs, fat = EXCLUDED.fat,
        -- EXCLUDED's times are now() (the column default for updated_at): Citus takes
        -- no now() in DO UPDATE SET ("functions used in the DO UPDATE SET clause of
        -- INSERTs on distributed tables must be marked IMMUTABLE").
        verified = true, verified_at = coalesce(f.verified_at, EXCLUDED.verified_at),
        updated_at = EXCLUDED.updated_at
    -- Only a row that differs is written: a second import leaves every row as it was.
    WHERE (f.name, f.brand, f.barcode, f.calories, f.protein, f.carbs, f.fat, f.verified)
          IS DISTINCT FROM
          (EXCLUDED.name, EXCLUDED.brand, EXCLUDED.barcode, EXCLUDED.calories,
           EXCLUDED.protein, EXCLUDED.carbs, EXCLUDED.fat, true)
    RETURNING xmax = 0 AS inserted
)
SELECT (SELECT count(*) FROM food_import_rows) AS staged,
       count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM written
"""

_HAS_SOURCE = "SELECT EXISTS (SELECT 1 FROM foods WHERE source = $1)"


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One checked row; ``line`` is where the file has it (a CSV line, a JSON index)."""

    line: int
    source: str
    source_id: str
    name: str
    brand: str | None
    barcode: str | None
    calories: Decimal
    protein: Decimal
    carbs: Decimal
    fat: Decimal


_ROW_COLUMNS = [f.name for f in fields(ImportRow)]


@dataclass(frozen=True, slots=True)
class Clash:
    """A staged row whose ``field`` (source_id or barcode) repeats the row at
    ``first``, or, with ``first`` None, is another food's barcode already."""

    line: int
    field: str
    value: str
    first: int | None


@dataclass(frozen=True, slots=True)
class Written:
    inserted: int
    updated: int
    unchanged: int


class ImportConflict(Exception):
    """The upsert broke a constraint no check foresaw (another import meanwhile)."""


class StagedImport:
    """The rows of one import, staged in its transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.applied = False

    async def stage(self, rows: Sequence[ImportRow]) -> None:
        if rows:
            await self._conn.copy_records_to_table(
                "food_import_rows", records=[astuple(row) for row in rows],
                columns=_ROW_COLUMNS)

    async def clashes(self) -> AsyncIterator[Clash]:
        """The staged rows that clash with another row or another food, by line."""
        async for row in self._conn.cursor(_CONFLICTS):
            yield Clash(*row)

    async def discard(self, lines: Sequence[int]) -> None:
        if lines:
            await self._conn.execute(_DISCARD, list(lines))

    async def apply(self) -> Written:
        """Write the staged rows; the transaction commits when the block ends."""
        try:
            row = await self._conn.fetchrow(_UPSERT)
        except asyncpg.UniqueViolationError as exc:
            raise ImportConflict(str(exc)) from None
        self.applied = True
        return Written(row["inserted"], row["updated"],
                       row["staged"] - row["inserted"] - row["updated"])


@contextlib.asynccontextmanager
async def staged_import(pool: asyncpg.Pool) -> AsyncIterator[StagedImport]:
    """One import's transaction: committed if ``apply`` ran, else rolled back."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        staged = StagedImport(conn)
        try:
            await conn.execute(_STAGE)
            yield staged
        except BaseException:
            await transaction.rollback()
            raise
        if staged.applied:
            await transaction.commit()
        else:
            await transaction.rollback()


async def has_source(pool: asyncpg.Pool, source: str) -> bool:
    """Whether any food came from ``source`` (the first start's test for the dataset)."""
    found: bool = await pool.fetchval(_HAS_SOURCE, source)
    return found
