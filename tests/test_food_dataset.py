"""The shipped food dataset (docs/foods.md, "The dataset"): what it holds, that the
derivation script makes it from SR28's files byte for byte the same each time, and
that a built wheel carries it."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import py7zr
import pytest

from modi_sync.food_import import DATASET, DATASET_SOURCE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "derive_foods_dataset.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("derive_foods_dataset", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
        return list(csv.DictReader(text))


def test_the_shipped_csv_holds_every_sr28_food_with_its_four_nutrients():
    rows = _rows(DATASET)
    assert len(rows) == 8789
    assert sum(1 for row in rows if row["brand"]) == 1707
    assert {row["source"] for row in rows} == {DATASET_SOURCE} == {"usda-sr28"}
    assert len({row["source_id"] for row in rows}) == 8789
    for row in rows:
        for nutrient in ("calories", "protein", "carbs", "fat"):
            assert float(row[nutrient]) >= 0, (row["source_id"], nutrient)
    butter = next(row for row in rows if row["source_id"] == "01001")
    assert (butter["name"], butter["calories"], butter["fat"]) == ("Butter, salted", "717",
                                                                   "81.11")
    assert DATASET.stat().st_size < 250_000  # compact: it ships in every install


# -- the derivation, on a small SR28 of our own ------------------------------------------

FOOD_DES = (
    "~01001~^~0100~^~Butter, salted~^~BUTTER,WITH SALT~^^^~Y~^^0^^6.38^4.27^8.79^3.87\n"
    "~19002~^~1900~^~Crème brûlée, Acme style~^~CREME~^^~Acme Foods, Inc.~^^^0^^^^^\n"
)
FD_GROUP = "~0100~^~Dairy and Egg Products~\n~1900~^~Sweets~\n"
NUT_DATA = (
    "~01001~^~203~^0.85^16^0.074^~1~^^^^^^^^^^^11/1976^\n"
    "~01001~^~204~^81.11^580^0.065^~1~^^^^^^^^^^^^\n"
    "~01001~^~205~^0.06^0^^~4~^~NC~^^^^^^^^^^^\n"
    "~01001~^~208~^717^0^^~4~^~NC~^^^^^^^^^^^\n"
    "~01001~^~255~^16.17^16^0.12^~1~^^^^^^^^^^^\n"  # water: not one of ours
    "~19002~^~208~^250^0^^~4~^^^^^^^^^^^^\n"
    "~19002~^~203~^4.125^0^^~4~^^^^^^^^^^^^\n"
    "~19002~^~204~^12.5^0^^~4~^^^^^^^^^^^^\n"
    "~19002~^~205~^30.00^0^^~4~^^^^^^^^^^^^\n"
)


def _sr28(directory: Path, *, packed: bool) -> Path:
    directory.mkdir()
    (directory / "FOOD_DES.txt").write_bytes(FOOD_DES.encode("latin-1"))
    (directory / "FD_GROUP.txt").write_bytes(FD_GROUP.encode("latin-1"))
    if packed:
        with py7zr.SevenZipFile(directory / "NUT_DATA.7z", "w") as seven:
            seven.writestr(NUT_DATA.encode("latin-1"), "NUT_DATA.txt")
    else:
        (directory / "NUT_DATA.txt").write_bytes(NUT_DATA.encode("latin-1"))
    return directory


def _derive(source: Path, output: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--source-dir", str(source),
                           "--output", str(output)],
                          capture_output=True, text=True, timeout=60, check=True)


def test_the_script_derives_the_csv_from_sr28_files(tmp_path: Path):
    out = tmp_path / "foods.csv.gz"
    done = _derive(_sr28(tmp_path / "sr28", packed=True), out)
    assert "2 foods, 1 with a brand" in done.stdout
    assert _rows(out) == [
        {"source": "usda-sr28", "source_id": "01001", "name": "Butter, salted", "brand": "",
         "food_group": "Dairy and Egg Products",
         "calories": "717", "protein": "0.85", "carbs": "0.06", "fat": "81.11"},
        {"source": "usda-sr28", "source_id": "19002", "name": "Crème brûlée, Acme style",
         "brand": "Acme Foods, Inc.", "food_group": "Sweets",
         # Rounded to the table's two places, trailing zeros gone.
         "calories": "250", "protein": "4.13", "carbs": "30", "fat": "12.5"},
    ]


def test_the_derivation_is_byte_for_byte_repeatable(tmp_path: Path):
    packed, plain = _sr28(tmp_path / "a", packed=True), _sr28(tmp_path / "b", packed=False)
    outputs = [tmp_path / "1.csv.gz", tmp_path / "2.csv.gz", tmp_path / "3.csv.gz"]
    _derive(packed, outputs[0])
    _derive(packed, outputs[1])
    _derive(plain, outputs[2])  # NUT_DATA.txt as it is, or from the 7z: the same
    assert outputs[0].read_bytes() == outputs[1].read_bytes() == outputs[2].read_bytes()
    assert outputs[0].read_bytes()[4:8] == b"\0\0\0\0"  # gzip's mtime


def test_a_food_without_one_of_the_four_nutrients_stops_the_derivation(tmp_path: Path):
    source = _sr28(tmp_path / "sr28", packed=False)
    lines = NUT_DATA.splitlines(keepends=True)
    (source / "NUT_DATA.txt").write_text("".join(line for line in lines
                                                 if not line.startswith("~19002~^~204~")))
    script = _script()
    with pytest.raises(ValueError, match="19002 has no value for fat"):
        script.derive_rows(script.dir_reader(source))


def test_a_built_wheel_ships_the_dataset(tmp_path: Path):
    app = tmp_path / "app"  # a clean copy: no build/ of an earlier build to borrow from
    app.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, app / name)
    for name in ("modi_sync", "storage", "ocr_worker"):
        shutil.copytree(ROOT / name, app / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(app)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("modi_sync-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("modi_sync/data/foods_usda_sr28.csv.gz")
    assert shipped == DATASET.read_bytes()
    assert len(gzip.GzipFile(fileobj=io.BytesIO(shipped)).read().splitlines()) == 8790
