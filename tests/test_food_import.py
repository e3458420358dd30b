"""``modi-sync foods import`` and the dataset's load on first start (docs/foods.md,
"Importing"): CSV and JSON, idempotence, invalid rows by line, the bounds, the
progress bar, and the autoload of the embedded default."""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from modi_sync import food_import
from modi_sync.app import create_app
from modi_sync.config import ConfigError, Settings, load_settings
from modi_sync.food_import import (
    AUTOLOAD,
    DATASET_SOURCE,
    ImportFileError,
    InvalidRow,
    Progress,
    Rejected,
    autoload_dataset,
    autoload_wanted,
    gtin,
    import_file,
    progress_wanted,
)
from storage.food_cache import FOODS_VERSION

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls, _with_database, run_cli

HEADER = "source_id,name,brand,barcode,calories,protein,carbs,fat\n"


def _barcode(seed: int | None = None) -> str:
    """A fresh valid EAN-13: the unique index spans every test's foods."""
    body = f"{(seed if seed is not None else uuid.uuid4().int) % 10**12:012d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


async def _rows(db: asyncpg.Connection, source: str) -> dict[str, asyncpg.Record]:
    rows = await db.fetch(
        "SELECT source_id, name, brand, barcode, calories, protein, carbs, fat, verified,"
        " verified_at, created_by, updated_at, xmin::text AS xmin"
        " FROM foods WHERE source = $1", source)
    return {row["source_id"]: row for row in rows}


async def _foods_version(redis: Redis) -> int:
    return int(await redis.get(FOODS_VERSION) or 0)


def _collect() -> tuple[list[Rejected], Any]:
    seen: list[Rejected] = []
    return seen, seen.append


# -- CSV, JSON, idempotence -------------------------------------------------------------


async def test_a_csv_imports_verified_foods_and_a_second_import_changes_nothing(
        services, db, tmp_path):
    upc = _barcode(uuid.uuid4().int % 10**11)[1:]  # 12 digits: a UPC-A
    path = tmp_path / f"shop-{uuid.uuid4().hex[:8]}.csv"
    path.write_text(HEADER
                    + f"a1,\"Oats, rolled\",Acme,{upc},379,13.15,67.7,6.52\n"
                    + "a2,Apple,,,52,0.26,13.81,0.17\n"
                    + "a3,Crème fraîche,,,292,2.1,2.9,30\n")
    source = path.name.removesuffix(".csv")  # rows naming no source take the file's name

    code, out, err = await run_cli(services, "foods", "import", str(path))
    assert code == 0, err
    assert out.strip() == f"{path.name}: 3 inserted, 0 updated, 0 unchanged, 0 invalid"
    first = await _rows(db, source)
    assert set(first) == {"a1", "a2", "a3"}
    oats = first["a1"]
    assert (oats["name"], oats["brand"], oats["barcode"]) == ("Oats, rolled", "Acme", "0" + upc)
    assert str(oats["fat"]) == "6.52" and first["a2"]["brand"] is None
    assert all(r["verified"] and r["verified_at"] and r["created_by"] is None
               for r in first.values())

    code, out, err = await run_cli(services, "foods", "import", str(path))
    assert code == 0, err
    assert "0 inserted, 0 updated, 3 unchanged" in out
    second = await _rows(db, source)
    assert [(r["xmin"], r["updated_at"]) for r in second.values()] == \
           [(r["xmin"], r["updated_at"]) for r in first.values()]  # not one row written

    path.write_text(HEADER + f"a1,\"Oats, rolled\",Acme,{upc},380,13.15,67.7,6.52\n")
    code, out, err = await run_cli(services, "foods", "import", str(path))
    assert "0 inserted, 1 updated, 0 unchanged" in out
    assert (await _rows(db, source))["a1"]["calories"] == 380


async def test_gzipped_json_imports_and_positions_are_array_indexes(pool, redis, db, tmp_path):
    source = f"json-{uuid.uuid4().hex[:8]}"
    items: list[Any] = [
        {"source": source, "source_id": "1", "name": "Rice", "calories": 130,
         "protein": 2.7, "carbs": 28.2, "fat": 0.3, "barcode": _barcode()},
        {"source": source, "source_id": "2", "name": "Egg", "calories": "143",
         "protein": "12.6", "carbs": "0.7", "fat": "9.5", "extra": "ignored"},
    ]
    path = tmp_path / "foods.json.gz"
    path.write_bytes(gzip.compress(json.dumps(items).encode()))
    seen, rejected = _collect()
    version = await _foods_version(redis)
    report = await import_file(pool, redis, path, on_rejected=rejected)
    assert (report.imported, report.inserted, seen) == (True, 2, [])
    assert str((await _rows(db, source))["1"]["protein"]) == "2.70"
    assert await _foods_version(redis) == version + 1  # cached answers are stale now
    report = await import_file(pool, redis, path, on_rejected=rejected)
    assert (report.unchanged, await _foods_version(redis)) == (2, version + 1)

    items += [{"source": source, "source_id": "3", "name": "Bad", "calories": -1,
               "protein": 0, "carbs": 0, "fat": 0}, "not an object"]
    path.write_bytes(gzip.compress(json.dumps(items).encode()))
    report = await import_file(pool, redis, path, on_rejected=rejected)
    assert not report.imported and report.invalid == 2
    assert [str(r) for r in seen] == ["item 2: calories: must not be negative",
                                      "item 3: not an object"]


# -- invalid rows ------------------------------------------------------------------------


def _invalid_csv(path: Path, good: str) -> None:
    path.write_text(
        HEADER                                                           # line 1
        + f"g1,Good one,,{good},100,10,10,10\n"                          # 2
        + "b1,Bad barcode,,4006381333932,100,1,1,1\n"                    # 3 wrong check digit
        + "b2,\"A name\nover two lines\",,,abc,1,1,1\n"                  # 4-5
        + "b3,Negative,,,100,-1,1,1\n"                                   # 6
        + "b4,Not a number at all,,,NaN,1,1,1\n"                         # 7
        + f"b5,{'x' * 201},,,1,1,1,1\n"                                  # 8
        + "b6,Too much,,,100,50,40,20\n"                                 # 9 110 g of 100 g
        + ",No key,,,1,1,1,1\n"                                          # 10
        + "b7,Short row\n"                                               # 11
        + "g1,Same key again,,,1,1,1,1\n"                                # 12
        + "\n"                                                           # 13 blank: no row
        + "g2,Good two,,,1e2,1,1,1\n")                                   # 14


EXPECTED_INVALID = [
    "line 3: barcode: wrong check digit",
    "line 4: name: holds a control character",
    "line 6: protein: must not be negative",
    "line 7: calories: must be finite",
    "line 8: name: longer than 200 characters",
    "line 9: protein, carbs and fat: more than 101 g per 100 g",
    "line 10: source_id: missing",
    "line 11: 2 fields where the header has 8",
    "line 12: source_id: g1 repeats line 2",
]


async def test_invalid_rows_are_reported_by_line_and_nothing_is_imported(
        services, db, tmp_path):
    path = tmp_path / f"bad-{uuid.uuid4().hex[:8]}.csv"
    _invalid_csv(path, _barcode())
    code, out, err = await run_cli(services, "foods", "import", str(path))
    assert code == 65
    assert re.findall(r"line \d+: .*", err) == EXPECTED_INVALID
    assert "9 invalid rows; nothing imported" in err
    assert out == ""
    assert await _rows(db, path.stem) == {}


async def test_skip_invalid_imports_the_valid_rows_and_still_reports_the_rest(
        services, db, tmp_path):
    path = tmp_path / f"bad-{uuid.uuid4().hex[:8]}.csv"
    _invalid_csv(path, _barcode())
    code, out, err = await run_cli(services, "foods", "import", str(path), "--skip-invalid")
    assert code == 0, err
    assert re.findall(r"line \d+: .*", err) == EXPECTED_INVALID
    assert "2 inserted, 0 updated, 0 unchanged, 9 invalid" in out
    assert set(await _rows(db, path.stem)) == {"g1", "g2"}


async def test_a_barcode_another_food_holds_is_an_invalid_row(pool, redis, db, tmp_path):
    taken = _barcode()
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(HEADER + f"x,Owner,,{taken},1,1,1,1\n")
    second.write_text(HEADER + "y,Fine,,,1,1,1,1\n" + f"z,Thief,,{taken},1,1,1,1\n")
    seen, rejected = _collect()
    owner = await import_file(pool, redis, first, source=f"s-{taken}", on_rejected=rejected)
    assert owner.imported
    report = await import_file(pool, redis, second, source=f"t-{taken}", on_rejected=rejected)
    assert not report.imported
    assert [str(r) for r in seen] == [f"line 3: barcode: {taken} belongs to another food "
                                      "already"]
    assert await _rows(db, f"t-{taken}") == {}


@pytest.mark.parametrize(("given", "stored"), [
    ("4006381333931", "4006381333931"),  # EAN-13
    ("036000291452", "0036000291452"),  # UPC-A, stored as EAN-13
    ("96385074", "96385074"),  # EAN-8
    (None, None), ("", None),
])
def test_barcodes_are_gtins_with_their_check_digit(given, stored):
    assert gtin({"barcode": given}) == stored


@pytest.mark.parametrize("given", ["4006381333932", "1234567", "12345678901234", "036000291452x",
                                   "٤٠٠٦٣٨١٣٣٣٩٣١", 4006381333931])
def test_a_barcode_that_is_no_gtin_is_refused(given):
    with pytest.raises(InvalidRow, match="barcode"):
        gtin({"barcode": given})


# -- bounds ------------------------------------------------------------------------------


async def test_a_json_file_over_the_bound_is_refused_whole(pool, redis, tmp_path, monkeypatch):
    monkeypatch.setattr(food_import, "MAX_JSON_BYTES", 1000)
    bomb = tmp_path / "bomb.json.gz"  # small on disk, over the bound once unpacked
    bomb.write_bytes(gzip.compress(b"[" + b" " * 5000 + b"]"))
    assert bomb.stat().st_size < 1000
    with pytest.raises(ImportFileError, match="at most"):
        await import_file(pool, redis, bomb, on_rejected=_collect()[1])


async def test_a_csv_over_the_row_bound_is_refused_whole(pool, redis, db, tmp_path, monkeypatch):
    monkeypatch.setattr(food_import, "MAX_ROWS", 3)
    monkeypatch.setattr(food_import, "CHUNK_ROWS", 2)  # the first rows are staged already
    source = f"many-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "many.csv"
    path.write_text(HEADER + "".join(f"{n},Food {n},,,1,1,1,1\n" for n in range(4)))
    with pytest.raises(ImportFileError, match="more than 3 rows"):
        await import_file(pool, redis, path, source=source, on_rejected=_collect()[1])
    assert await _rows(db, source) == {}


async def test_a_file_that_is_neither_csv_nor_json_nor_there_is_refused(services, tmp_path):
    (tmp_path / "foods.xml").write_text("<foods/>")
    code, _, err = await run_cli(services, "foods", "import", str(tmp_path / "foods.xml"))
    assert code == 65 and ".csv, .json" in err
    code, _, err = await run_cli(services, "foods", "import", str(tmp_path / "none.csv"))
    assert code == 66 and "none.csv" in err
    (tmp_path / "nohead.csv").write_text("id,title\n1,x\n")
    code, _, err = await run_cli(services, "foods", "import", str(tmp_path / "nohead.csv"))
    assert code == 65 and "no column name, calories" in err


# -- the progress bar --------------------------------------------------------------------


def test_the_progress_bar_is_drawn_on_a_terminal_only(tmp_path):
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal, (tmp_path / "log").open("w") as log_file:
        assert progress_wanted(terminal)
        assert not progress_wanted(log_file)
        bar = Progress(terminal, "importing x.csv", total_bytes=200)
        bar.update(100, 10)
        bar.update(200, 20, final=True)
    drawn = _read_all(leader)
    assert "importing x.csv [###############" in drawn and "100% 20 rows" in drawn
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as pipe:
        assert not progress_wanted(pipe)


def _read_all(leader: int) -> str:
    """Everything written to a pty whose other end is closed: one read may return only
    the first of several writes, and the end reads as EIO on Linux."""
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode()


async def test_the_command_draws_no_bar_into_a_pipe(services, tmp_path):
    path = tmp_path / f"quiet-{uuid.uuid4().hex[:8]}.csv"
    path.write_text(HEADER + "1,Pear,,,57,0.36,15.23,0.14\n")
    code, out, err = await run_cli(services, "foods", "import", str(path))
    assert code == 0 and "\r" not in out + err and "[#" not in err


# -- the shipped dataset, and the first start ---------------------------------------------


@pytest.fixture
async def fresh_dsn(services: ServiceUrls) -> AsyncIterator[str]:
    """A database of its own: the dataset's 8,789 foods stay out of the others' tests."""
    name = f"modi_foods_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(services.database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def _autoloaded(aiohttp_client: AiohttpClient, settings: Settings) -> Any:
    app = create_app(settings)
    app.cleanup_ctx.append(autoload_dataset)  # as `serve` does
    client = await aiohttp_client(app)
    report = await app[AUTOLOAD]
    await client.close()
    return report


async def test_the_first_start_loads_the_dataset_and_a_later_one_does_not(
        aiohttp_client, settings, services, fresh_dsn):
    settings = replace(settings, database_url=fresh_dsn, foods_autoload="on")
    report = await _autoloaded(aiohttp_client, settings)
    assert (report.inserted, report.invalid) == (8789, 0)
    conn = await asyncpg.connect(fresh_dsn)
    try:
        counts = await conn.fetchrow(
            "SELECT count(*) AS foods, count(brand) AS branded,"
            " count(*) FILTER (WHERE verified AND created_by IS NULL) AS verified"
            " FROM foods WHERE source = $1", DATASET_SOURCE)
        assert tuple(counts) == (8789, 1707, 8789)
        await conn.execute("DELETE FROM foods WHERE source_id = '01001'")

        assert await _autoloaded(aiohttp_client, settings) is None  # loaded already
        assert await conn.fetchval("SELECT count(*) FROM foods") == 8788

        # The one command for a fresh install (or a repair): the dataset, no FILE.
        code, out, err = await run_cli(services, "foods", "import", database_url=fresh_dsn)
        assert code == 0, err
        assert "1 inserted, 0 updated, 8788 unchanged, 0 invalid" in out
    finally:
        await conn.close()


def test_autoload_is_on_for_the_embedded_default_only():
    assert autoload_wanted(Settings())
    assert not autoload_wanted(Settings(database_url="postgresql://db/modi"))
    assert autoload_wanted(Settings(database_url="postgresql://db/modi", foods_autoload="on"))
    assert not autoload_wanted(Settings(foods_autoload="off"))
    assert load_settings({"MODI_FOODS_AUTOLOAD": "off"}, server=False).foods_autoload == "off"
    with pytest.raises(ConfigError, match="MODI_FOODS_AUTOLOAD"):
        load_settings({"MODI_FOODS_AUTOLOAD": "sometimes", "JWT_SECRET": JWT_SECRET})


def _wait_for_log(server: ServerProcess, text: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log_path.read_text()
        if text in log:
            return log
        assert server.proc is not None and server.proc.poll() is None, log[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {server.log_path.read_text()[-3000:]}")


def test_serve_on_the_embedded_default_loads_the_dataset_once(embedded_server):
    del embedded_server.env["MODI_FOODS_AUTOLOAD"]  # the default: auto
    embedded_server.start()
    _wait_for_log(embedded_server, "food dataset loaded: 8789 inserted, 0 updated, "
                                   "0 unchanged, 0 invalid")
    assert embedded_server.stop() == 0
    embedded_server.start()
    log = _wait_for_log(embedded_server, "the food dataset is loaded already")
    assert log.count("food dataset loaded:") == 1
