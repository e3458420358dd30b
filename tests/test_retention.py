"""Retention (modi_sync/retention.py, storage/retention.py): old audit entries and old
snapshots go, newer ones stay; one instance at a time; the server's scheduled pass; and
the audit log's append-only trigger that only retention (and erasure) get past."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from modi_sync.config import Settings
from modi_sync.retention import retention_pass
from modi_sync.runtime import Storage, open_storage
from storage.retention import RETENTION_LOCK

from .conftest import register, run_cli
from .yclient import eventually

DAY = timedelta(days=1)


async def _audit_entry(db: asyncpg.Connection, age: timedelta) -> str:
    """An entry logged ``age`` ago; its request id, to find it again."""
    request_id = f"retention-test-{uuid.uuid4()}"
    await db.execute(
        "INSERT INTO audit_log (at, request_id, action, resource_type)"
        " VALUES ($1, $2, 'test.action', 'test')", datetime.now(UTC) - age, request_id)
    return request_id


async def _audit_kept(db: asyncpg.Connection, request_id: str) -> bool:
    return bool(await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE request_id = $1", request_id))


async def _snapshot(db: asyncpg.Connection, doc_id: int, age: timedelta) -> int:
    snapshot_id: int = await db.fetchval(
        "INSERT INTO doc_snapshots (user_id, doc_id, taken_at, cut_seq, data)"
        " SELECT user_id, id, $2, 0, '' FROM documents WHERE id = $1"
        " RETURNING id", doc_id, datetime.now(UTC) - age)
    return snapshot_id


async def _snapshot_kept(db: asyncpg.Connection, snapshot_id: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM doc_snapshots WHERE id = $1",
                                  snapshot_id))


@pytest.fixture
async def doc_id(client, db) -> int:
    """A document of a registered user, to hang snapshots on."""
    user_id = uuid.UUID((await register(client))["user"]["id"])
    made: int = await db.fetchval(
        "INSERT INTO documents (user_id, name) VALUES ($1, 'diary') RETURNING id", user_id)
    return made


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    async with open_storage(settings) as opened:
        yield opened


async def test_the_command_removes_what_is_past_retention_and_keeps_the_rest(
        services, db, doc_id):
    old_entry, new_entry = await _audit_entry(db, 366 * DAY), await _audit_entry(db, 364 * DAY)
    old_snap, new_snap = await _snapshot(db, doc_id, 31 * DAY), await _snapshot(db, doc_id, DAY)

    code, out, err = await run_cli(services, "retention", "run")
    assert code == 0, err
    match = re.fullmatch(r"removed (\d+) audit entries, (\d+) snapshots, \d+ images\n", out)
    assert match and int(match[1]) >= 1 and int(match[2]) >= 1, out

    assert not await _audit_kept(db, old_entry) and await _audit_kept(db, new_entry)
    assert not await _snapshot_kept(db, old_snap) and await _snapshot_kept(db, new_snap)


async def test_snapshot_retention_of_zero_keeps_no_snapshot(settings, db, doc_id):
    fresh = await _snapshot(db, doc_id, timedelta(minutes=1))
    async with open_storage(replace(settings, snapshot_retention_days=0)) as storage:
        removed = await retention_pass(storage)
    assert removed is not None and removed.snapshots >= 1
    assert not await _snapshot_kept(db, fresh)


async def test_a_pass_skips_while_another_instance_holds_the_lock(services, storage, db):
    old_entry = await _audit_entry(db, 400 * DAY)
    async with db.transaction():  # another instance, in the middle of its pass
        assert await db.fetchval("SELECT pg_try_advisory_xact_lock($1::bigint)",
                                 RETENTION_LOCK)
        assert await retention_pass(storage) is None
        code, _, err = await run_cli(services, "retention", "run")
        assert code == 75 and "another instance" in err
        assert await _audit_kept(db, old_entry)
    removed = await retention_pass(storage)  # the lock went with that transaction
    assert removed is not None and removed.audit_entries >= 1
    assert not await _audit_kept(db, old_entry)


async def test_two_passes_at_once_do_the_work_once(storage, db):
    old_entry = await _audit_entry(db, 400 * DAY)
    results = await asyncio.gather(retention_pass(storage), retention_pass(storage))
    done = [r for r in results if r is not None]
    # Either one skipped (they overlapped) or the second found nothing left (they did not).
    assert sum(r.audit_entries for r in done) >= 1
    assert len(done) == 1 or min(r.audit_entries for r in done) == 0
    assert not await _audit_kept(db, old_entry)


async def test_the_server_runs_retention_on_its_schedule(make_client, db):
    old_entry = await _audit_entry(db, 400 * DAY)
    client = await make_client(retention_interval_seconds=0.2)
    await eventually(lambda: _gone(db, old_entry))
    await client.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "scheduled retention"]


async def test_the_first_scheduled_pass_waits_one_interval(make_client, db):
    old_entry = await _audit_entry(db, 400 * DAY)
    client = await make_client(retention_interval_seconds=3600)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "scheduled retention"]
    for _ in range(20):  # nothing at start-up, nor shortly after
        assert await _audit_kept(db, old_entry)
        await asyncio.sleep(0.02)
    await client.close()  # stops the waiting task at once, not after the hour
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "scheduled retention"]


async def test_no_scheduled_pass_with_an_interval_of_zero(make_client):
    client = await make_client(retention_interval_seconds=0)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "scheduled retention"]
    await client.close()


async def _gone(db: asyncpg.Connection, request_id: str) -> bool:
    return not await _audit_kept(db, request_id)


async def test_the_audit_log_refuses_a_plain_delete_or_update(db):
    entry = await _audit_entry(db, 400 * DAY)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("DELETE FROM audit_log WHERE request_id = $1", entry)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE audit_log SET action = 'forged' WHERE request_id = $1", entry)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("UPDATE audit_log SET email = NULL, ip = NULL WHERE request_id = $1",
                         entry)  # erasure's change, without erasure's declaration
    assert await db.fetchval("SELECT action FROM audit_log WHERE request_id = $1",
                             entry) == "test.action"
