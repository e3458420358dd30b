"""Importing foods from a file, and the shipped dataset's load on first start
(docs/foods.md, "The dataset" and "Importing").

A file is CSV (a header row, then one food a line) or JSON (an array of objects), either
optionally gzipped, with the fields ``name``, ``calories``, ``protein``, ``carbs``,
``fat`` and ``source_id`` (required), ``brand``, ``barcode`` and ``source`` (optional;
a row without ``source`` takes the import's default: ``--source``, else the file's
name without its extensions). Other CSV columns and JSON keys are ignored.

Every row is checked before anything is written; each invalid one is reported with
its position: the CSV line number (the header is line 1), or the JSON array index
(from 0). Any invalid row stops the import with nothing written, unless the caller
skips invalid rows. The file is read in chunks, in a worker thread, and staged in
batches: the event loop is never held for long, and memory stays bounded (CSV is
streamed; JSON, parsed whole, is refused past ``MAX_JSON_BYTES``).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, TextIO, cast

import asyncpg
import orjson
from aiohttp import web
from redis.asyncio import Redis

from storage import food_cache
from storage.food_import import Clash, ImportConflict, ImportRow, has_source, staged_import

from .app_keys import STORAGE
from .barcodes import normalize_barcode
from .config import Settings

log = logging.getLogger(__name__)

DATASET = Path(__file__).resolve().parent / "data" / "foods_usda_sr28.csv.gz"
DATASET_SOURCE = "usda-sr28"

# The bounds of one file (docs/foods.md, "Importing"). A CSV field is also bounded by
# the csv module's own limit (128 KiB), so one hostile line cannot fill the memory.
MAX_ROWS = 1_000_000
MAX_JSON_BYTES = 32 * 1024 * 1024  # decompressed; a larger set goes as CSV
MAX_COLUMNS = 64
MAX_NAME_CHARS = 200  # name and brand
MAX_KEY_CHARS = 64  # source and source_id
MAX_CALORIES = Decimal(1000)  # pure fat is 900 kcal per 100 g
MAX_GRAMS = Decimal(100)
# Protein, carbs and fat of 100 g weigh at most 100 g, give or take the rounding and
# analysis error of real data (SR28 has two oils at 100.09 and 100.16 g).
MAX_MACRO_SUM = Decimal(101)
CHUNK_ROWS = 1000  # read, checked and staged at a time

REQUIRED = ("name", "calories", "protein", "carbs", "fat", "source_id")
NUTRIENTS = ("calories", "protein", "carbs", "fat")


class ImportFileError(Exception):
    """The file as a whole cannot be imported (unreadable, malformed, past a bound)."""


class InvalidRow(ValueError):
    """One row fails a check; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Rejected:
    position: str  # what ``line`` counts: "line" (CSV, the header is 1), "item" (JSON, from 0)
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.position} {self.line}: {self.reason}"


@dataclass
class ImportReport:
    position: str  # what a row's number counts: "line" (CSV) or "item" (JSON)
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    imported: bool = False  # committed: nothing invalid, or invalid rows skipped

    @property
    def changed(self) -> bool:
        return self.imported and (self.inserted + self.updated) > 0

    def summary(self) -> str:
        return (f"{self.inserted} inserted, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.invalid} invalid")


# -- checking one row ---------------------------------------------------------------------


def _text(raw: Mapping[str, Any], name: str, limit: int, *, required: bool) -> str | None:
    value = raw.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidRow(f"{name}: missing")
        return None
    if not isinstance(value, str):
        raise InvalidRow(f"{name}: must be text")
    value = value.strip()
    if len(value) > limit:
        raise InvalidRow(f"{name}: longer than {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidRow(f"{name}: holds a control character")
    return value


def _number(raw: Mapping[str, Any], name: str, limit: Decimal) -> Decimal:
    value = raw.get(name)
    if value is None or value == "":
        raise InvalidRow(f"{name}: missing")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRow(f"{name}: must be a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidRow(f"{name}: must be a number") from None
    if not number.is_finite():
        raise InvalidRow(f"{name}: must be finite")
    if number < 0:
        raise InvalidRow(f"{name}: must not be negative")
    if number > limit:
        raise InvalidRow(f"{name}: more than {limit} per 100 g")
    return number


def gtin(raw: Mapping[str, Any]) -> str | None:
    """A GTIN-8 or GTIN-13 with a valid check digit; a UPC-A (12 digits) becomes its
    EAN-13 form (a leading 0), as the table stores it."""
    value = raw.get("barcode")
    if isinstance(value, int) and not isinstance(value, bool):
        raise InvalidRow("barcode: must be text (a number loses its leading zeros)")
    code = _text(raw, "barcode", 14, required=False)
    if code is None:
        return None
    try:
        return normalize_barcode(code)
    except ValueError as e:
        raise InvalidRow(f"barcode: {e}") from None


def check_row(line: int, raw: Mapping[str, Any], default_source: str) -> ImportRow:
    """The row as it will be staged, or InvalidRow naming the first thing wrong."""
    name = _text(raw, "name", MAX_NAME_CHARS, required=True)
    source_id = _text(raw, "source_id", MAX_KEY_CHARS, required=True)
    source = _text(raw, "source", MAX_KEY_CHARS, required=False) or default_source
    assert name is not None and source_id is not None
    brand = _text(raw, "brand", MAX_NAME_CHARS, required=False)
    barcode = gtin(raw)
    calories = _number(raw, "calories", MAX_CALORIES)
    protein, carbs, fat = (_number(raw, n, MAX_GRAMS) for n in ("protein", "carbs", "fat"))
    if protein + carbs + fat > MAX_MACRO_SUM:
        raise InvalidRow(f"protein, carbs and fat: more than {MAX_MACRO_SUM} g per 100 g")
    return ImportRow(line, source, source_id, name, brand, barcode,
                     calories, protein, carbs, fat)


# -- reading a file -----------------------------------------------------------------------


def default_source(path: Path) -> str:
    """The file's name without .gz, .csv or .json: ``my-foods.csv.gz`` -> ``my-foods``."""
    name = path.name
    for suffix in (".gz", ".csv", ".json"):
        name = name.removesuffix(suffix)
    return name[:MAX_KEY_CHARS]


def _format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for kind in ("csv", "json"):
        if name.endswith("." + kind):
            return kind
    raise ImportFileError("the file's name must end in .csv, .json, .csv.gz or .json.gz")


@dataclass
class Chunk:
    rows: list[ImportRow] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    position: int = 0  # bytes of the file read so far (compressed, for .gz)


class FoodFile:
    """A food file, read a chunk of checked rows at a time (call from a thread)."""

    def __init__(self, path: Path, source: str | None = None) -> None:
        self.path = path
        self.kind = _format(path)
        self.position = "line" if self.kind == "csv" else "item"
        self.source = source or default_source(path)
        try:
            self._raw: IO[bytes] = path.open("rb")
        except OSError as exc:
            raise FileNotFoundError(f"{path}: {exc.strerror}") from None
        self.size = path.stat().st_size
        # Both layers are closed by __exit__ (the gzip layer leaves the file open).
        self._stream = cast(IO[bytes], gzip.GzipFile(fileobj=self._raw, mode="rb")) \
            if path.name.lower().endswith(".gz") else self._raw
        self._text: TextIO | None = None
        self._rows: Iterator[tuple[int, Any]] | None = None

    def __enter__(self) -> FoodFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._text is not None:
            self._text.close()
        self._stream.close()
        self._raw.close()

    def _records(self) -> Iterator[tuple[int, Any]]:
        if self.kind == "json":
            return _json_rows(self._stream)
        self._text = io.TextIOWrapper(self._stream, encoding="utf-8-sig", newline="")
        return _csv_rows(self._text)

    def next_chunk(self, size: int = CHUNK_ROWS) -> Chunk | None:
        """Up to ``size`` rows, checked; None at the end of the file."""
        if self._rows is None:
            self._rows = self._records()
        chunk = Chunk()
        for line, raw in self._rows:
            try:
                if isinstance(raw, InvalidRow):
                    raise raw
                if not isinstance(raw, Mapping):
                    raise InvalidRow("not an object")
                chunk.rows.append(check_row(line, raw, self.source))
            except InvalidRow as exc:
                chunk.rejected.append(Rejected(self.position, line, str(exc)))
            if len(chunk.rows) + len(chunk.rejected) >= size:
                break
        chunk.position = self._raw.tell()
        return chunk if chunk.rows or chunk.rejected else None


def _csv_rows(text: TextIO) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(text)
    try:
        header = [column.strip().lower() for column in next(reader, [])]
        missing = [name for name in REQUIRED if name not in header]
        if missing:
            raise ImportFileError(f"the header has no column {', '.join(missing)}")
        if len(header) > MAX_COLUMNS:
            raise ImportFileError(f"more than {MAX_COLUMNS} columns")
        line = reader.line_num + 1
        for count, record in enumerate(reader, 1):
            if count > MAX_ROWS:
                raise ImportFileError(f"more than {MAX_ROWS:,} rows")
            if len(record) == len(header):
                yield line, dict(zip(header, record, strict=True))
            elif record:  # a blank line is no row
                yield line, InvalidRow(f"{len(record)} fields where the header has "
                                       f"{len(header)}")
            line = reader.line_num + 1  # a quoted field may span lines
    except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
        raise ImportFileError(f"line {reader.line_num}: {exc}") from None


def _json_rows(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    try:
        data = stream.read(MAX_JSON_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise ImportFileError(str(exc)) from None
    if len(data) > MAX_JSON_BYTES:
        raise ImportFileError(f"a JSON file may hold at most {MAX_JSON_BYTES // 2**20} MiB "
                              "(decompressed); import a larger set as CSV")
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ImportFileError(f"not JSON: {exc}") from None
    del data
    if not isinstance(items, list):
        raise ImportFileError("a JSON file must hold one array of objects")
    if len(items) > MAX_ROWS:
        raise ImportFileError(f"more than {MAX_ROWS:,} rows")
    yield from enumerate(items)


# -- progress on a terminal ---------------------------------------------------------------


def progress_wanted(stream: TextIO) -> bool:
    """A bar only for a person watching: never into a log file or a pipe."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or no stream at all
        return False


class Progress:
    """A one-line bar on a terminal, redrawn at most ten times a second. Our own few
    lines rather than tqdm: one bar does not need a dependency in every install."""

    def __init__(self, stream: TextIO, label: str, total_bytes: int) -> None:
        self._stream, self._label, self._total = stream, label, max(total_bytes, 1)
        self._drawn = 0.0

    def update(self, position: int, rows: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._drawn < 0.1:
            return
        self._drawn = now
        share = min(position / self._total, 1.0)
        bar = "#" * int(share * 30)
        self._stream.write(f"\r{self._label} [{bar:<30}] {share:4.0%} {rows:,} rows")
        if final:
            self._stream.write("\n")
        self._stream.flush()


# -- the import ---------------------------------------------------------------------------

OnRejected = Callable[[Rejected], None]


def _clash_reason(clash: Clash, position: str) -> str:
    if clash.first is None:
        return f"{clash.field}: {clash.value} belongs to another food already"
    return f"{clash.field}: {clash.value} repeats {position} {clash.first}"


async def import_file(pool: asyncpg.Pool, redis: Redis, path: Path, *,
                      source: str | None = None,
                      skip_invalid: bool = False, on_rejected: OnRejected,
                      progress: Progress | None = None) -> ImportReport:
    """Import ``path`` in one transaction; each invalid row goes to ``on_rejected``.

    Nothing is written when a row is invalid, unless ``skip_invalid``. Raises
    ImportFileError for a file that cannot be imported at all, FileNotFoundError for
    one that cannot be opened."""
    food_file = await asyncio.to_thread(FoodFile, path, source)
    report = ImportReport(food_file.position)
    with food_file:
        async with staged_import(pool) as staged:
            rows = 0
            while chunk := await asyncio.to_thread(food_file.next_chunk):
                for rejected in chunk.rejected:
                    on_rejected(rejected)
                report.invalid += len(chunk.rejected)
                rows += len(chunk.rows) + len(chunk.rejected)
                await staged.stage(chunk.rows)
                if progress is not None:
                    progress.update(chunk.position, rows)
            if progress is not None:
                progress.update(food_file.size, rows, final=True)
            clashing = []
            async for clash in staged.clashes():
                on_rejected(Rejected(report.position, clash.line,
                                     _clash_reason(clash, report.position)))
                clashing.append(clash.line)
            report.invalid += len(clashing)
            if report.invalid and not skip_invalid:
                return report  # rolled back: nothing written
            await staged.discard(clashing)
            try:
                written = await staged.apply()
            except ImportConflict as exc:
                raise ImportFileError(f"another change got in the way: {exc}") from None
    report.inserted, report.updated = written.inserted, written.updated
    report.unchanged, report.imported = written.unchanged, True
    if report.changed:  # cached search answers name the old version: none is served again
        await food_cache.bump_version(redis)
    return report


# -- the first start ----------------------------------------------------------------------

AUTOLOAD: web.AppKey[asyncio.Task[ImportReport | None]] = web.AppKey("foods_autoload")


def autoload_wanted(settings: Settings) -> bool:
    """``MODI_FOODS_AUTOLOAD``: ``auto`` loads the dataset on the embedded PostgreSQL
    only (an operator of an external database runs ``modi-sync foods import``)."""
    if settings.foods_autoload == "auto":
        return settings.database_url is None
    return settings.foods_autoload == "on"


async def autoload_dataset(app: web.Application) -> AsyncIterator[None]:
    """An aiohttp ``cleanup_ctx``: when wanted and no dataset food is stored yet, load
    the shipped dataset in the background while the server already serves. A stop
    midway rolls the import back; the next start does it again."""
    storage = app[STORAGE]
    if not autoload_wanted(storage.settings):
        yield
        return
    task = asyncio.create_task(_autoload(storage.pool, storage.redis),
                               name="food dataset autoload")
    app[AUTOLOAD] = task
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _autoload(pool: asyncpg.Pool, redis: Redis) -> ImportReport | None:
    try:
        if await has_source(pool, DATASET_SOURCE):
            log.info("the food dataset is loaded already")
            return None
        log.info("loading the food dataset (USDA SR28) in the background")
        report = await import_file(pool, redis, DATASET, on_rejected=lambda r: log.warning(
            "food dataset %s", r))
    except Exception:  # the server runs on; the next start tries again
        log.exception("loading the food dataset failed")
        return None
    log.info("food dataset loaded: %s", report.summary())
    return report


def stderr_progress(label: str, total_bytes: int) -> Progress | None:
    return Progress(sys.stderr, label, total_bytes) if progress_wanted(sys.stderr) else None
