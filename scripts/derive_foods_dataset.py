#!/usr/bin/env python3
"""Derive the shipped food dataset, modi_sync/data/foods_usda_sr28.csv.gz, from USDA's
National Nutrient Database for Standard Reference, Release 28 (docs/foods.md, "The
dataset").

    .venv/bin/python scripts/derive_foods_dataset.py --git-dir MIRROR [--commit C]
    .venv/bin/python scripts/derive_foods_dataset.py --source-dir DIR

The source is SR28's ASCII release: FOOD_DES.txt (the foods), FD_GROUP.txt (their
groups) and the nutrient values, NUT_DATA.txt or NUT_DATA.7z (as the SR28-PSQL
repository keeps it; unpacked with py7zr, in the dev extra). A maintainer's tool, not
the server's: it runs once per release, and its output is committed.

The output is byte for byte the same on every run (rows by NDB number, gzip with no
name and mtime 0), so re-deriving shows in git only what the source changed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

SOURCE = "usda-sr28"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "modi_sync/data/foods_usda_sr28.csv.gz"
COLUMNS = ("source", "source_id", "name", "brand", "food_group",
           "calories", "protein", "carbs", "fat")
# SR28's nutrient numbers (NUTR_DEF.txt) for the four the foods table holds.
NUTRIENTS = {"208": "calories", "203": "protein", "205": "carbs", "204": "fat"}
CENT = Decimal("0.01")

Reader = Callable[[str], bytes]  # a source file's name -> its bytes


def sr28_records(raw: bytes) -> Iterator[list[str]]:
    """SR28's format: one record a line, fields split by ``^``, text within ``~``,
    latin-1 (a few names hold accented letters)."""
    for line in raw.decode("latin-1").splitlines():
        if line.strip():
            yield [field.strip("~") for field in line.split("^")]


def nutrient_text(value: str) -> str:
    """The table's precision (numeric(10, 2)), without trailing zeros: what the CSV
    says is what a row will hold."""
    text = format(Decimal(value).quantize(CENT, ROUND_HALF_UP), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def nutrient_data(read: Reader) -> bytes:
    try:
        return read("NUT_DATA.txt")
    except FileNotFoundError:
        return _unpacked(read("NUT_DATA.7z"), "NUT_DATA.txt")


def _unpacked(archive: bytes, name: str) -> bytes:
    import py7zr  # only the 7z route needs it (the dev extra)

    with tempfile.TemporaryDirectory() as tmp:
        with py7zr.SevenZipFile(io.BytesIO(archive)) as seven:
            seven.extract(path=tmp, targets=[name])
        return (Path(tmp) / name).read_bytes()


def derive_rows(read: Reader) -> list[dict[str, str]]:
    groups = {rec[0]: rec[1] for rec in sr28_records(read("FD_GROUP.txt"))}
    values: dict[str, dict[str, str]] = {}
    for rec in sr28_records(nutrient_data(read)):
        ndb, nutrient, value = rec[0], rec[1], rec[2]
        if nutrient in NUTRIENTS:
            values.setdefault(ndb, {})[NUTRIENTS[nutrient]] = nutrient_text(value)
    rows = []
    for rec in sr28_records(read("FOOD_DES.txt")):
        ndb, group, name, manufacturer = rec[0], rec[1], rec[2], rec[5]
        nutrients = values.get(ndb, {})
        missing = set(NUTRIENTS.values()) - nutrients.keys()
        if missing:
            raise ValueError(f"food {ndb} has no value for {', '.join(sorted(missing))}")
        rows.append({"source": SOURCE, "source_id": ndb, "name": name,
                     "brand": manufacturer, "food_group": groups[group], **nutrients})
    rows.sort(key=lambda row: row["source_id"])
    return rows


def gzipped_csv(rows: list[dict[str, str]]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    out = io.BytesIO()
    # No file name and mtime 0 in the header: the same rows give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(text.getvalue().encode("utf-8"))
    return out.getvalue()


def git_reader(git_dir: Path, commit: str) -> Reader:
    def read(name: str) -> bytes:
        done = subprocess.run(  # noqa: S603 - git, with our own arguments
            ["git", f"--git-dir={git_dir}", "show", f"{commit}:{name}"],  # noqa: S607
            capture_output=True, check=False)
        if done.returncode != 0:
            raise FileNotFoundError(f"{name} at {commit} in {git_dir}")
        return done.stdout
    return read


def dir_reader(directory: Path) -> Reader:
    return lambda name: (directory / name).read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--git-dir", type=Path, help="a git dir holding SR28 (SR28-PSQL)")
    source.add_argument("--source-dir", type=Path, help="a directory of SR28's files")
    parser.add_argument("--commit", default="HEAD", help="with --git-dir (default HEAD)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    read = git_reader(args.git_dir, args.commit) if args.git_dir else dir_reader(args.source_dir)
    rows = derive_rows(read)
    args.output.write_bytes(gzipped_csv(rows))
    branded = sum(1 for row in rows if row["brand"])
    print(f"{args.output}: {len(rows)} foods, {branded} with a brand")
    return 0


if __name__ == "__main__":
    sys.exit(main())
