"""The operator's cron script: runs the compaction, reports, never overlaps itself."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
from pycrdt import Doc, Map

from .conftest import JWT_SECRET, ServiceUrls

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "nightly-compact"


def _run(services: ServiceUrls, lock: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
               JWT_SECRET=JWT_SECRET, MODI_MAINTENANCE_LOCK=str(lock),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)


async def _document_with_updates(dsn: str, count: int) -> int:
    doc, updates = Doc(), []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        doc.get("weights", type=Map)[f"w{i}"] = 70.0 + i
    conn = await asyncpg.connect(dsn)
    try:
        user_id = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
            f"cron-{uuid.uuid4().hex[:8]}@example.com")
        doc_id = await conn.fetchval(
            "INSERT INTO documents (user_id, name) VALUES ($1, 'd') RETURNING id", user_id)
        await conn.executemany(
            "INSERT INTO doc_updates (user_id, doc_id, seq, data) VALUES ($1, $2, $3, $4)",
            [(user_id, doc_id, seq, u) for seq, u in enumerate(updates, 1)])
        await conn.execute("UPDATE documents SET last_seq = $2 WHERE id = $1", doc_id,
                           len(updates))
    finally:
        await conn.close()
    return doc_id


async def _row_count(dsn: str, doc_id: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM doc_updates WHERE doc_id = $1", doc_id)
    finally:
        await conn.close()


def test_nightly_compact_runs_and_logs_a_summary(services: ServiceUrls, tmp_path: Path) -> None:
    assert _run(services, tmp_path / "lock").returncode == 0  # migrations in place
    doc_id = asyncio.run(_document_with_updates(services.database_url, 4))
    done = _run(services, tmp_path / "lock")
    assert done.returncode == 0, done.stderr
    summary = re.search(r"exit 0: .*compacted (\d+) documents", done.stdout)
    assert summary and int(summary.group(1)) >= 1
    assert "snapshots purged" in done.stdout
    assert asyncio.run(_row_count(services.database_url, doc_id)) == 1


def test_a_second_run_does_not_overlap_the_first(services: ServiceUrls, tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in progress holds it
        skipped = _run(services, lock)
    assert skipped.returncode == 75
    assert "another run holds" in skipped.stderr
    assert _run(services, lock).returncode == 0  # free again once the first run ends


def test_a_failure_exits_non_zero(services: ServiceUrls, tmp_path: Path) -> None:
    broken = services.__class__("postgresql://nobody@127.0.0.1:1/none", services.redis_url)
    failed = _run(broken, tmp_path / "lock")
    assert failed.returncode != 0
    assert f"exit {failed.returncode}" in failed.stdout
