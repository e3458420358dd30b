"""Migration 006 on a database filled through the schema before it (migrations 001-005).

The data is made the way the server made it: documents written to in turns (so the
one global identity interleaves their seqs), some compacted (holes in their seqs), with
snapshots, consents, images, food contributions, the popular list's notes and counts,
and audit entries. After 006 every row is there, each document's updates keep their
seqs and their order, each document's counter is its highest seq, every document loads
to the same content, and the next update of a document takes the seq after it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import pytest
from pycrdt import Doc, Map

from modi_sync.history import merge
from storage.database import create_pool, migrate
from storage.update_log import UpdateLog

from .conftest import ServiceUrls, _with_database

# The columns 006 adds, left out when rows are compared with the rows before it.
_ADDED = {"documents": ["last_seq"], "doc_updates": ["user_id"], "doc_snapshots": ["user_id"],
          "food_log_changes": ["user_id"], "food_log_counts": ["user_id"]}
TABLES = ["users", "documents", "doc_updates", "doc_snapshots", "consents", "audit_log",
          "foods", "food_words", "food_log_changes", "food_log_counts", "images"]


@pytest.fixture
async def old_pool(services: ServiceUrls, db: asyncpg.Connection) -> AsyncIterator[asyncpg.Pool]:
    """A database of its own, migrated up to 005."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    await db.execute(f'CREATE DATABASE "{name}"')
    pool = await create_pool(_with_database(services.database_url, name), max_size=4)
    try:
        assert (await migrate(pool, until=5))[-1] == "005_images.sql"
        yield pool
    finally:
        await pool.close()
        await db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _edits(doc_count: int, rounds: int) -> list[tuple[int, bytes]]:
    """(document index, Yjs update) in the order they were stored: each round writes to
    every document in turn."""
    docs: list[Doc] = [Doc() for _ in range(doc_count)]
    made: list[tuple[int, bytes]] = []
    for r in range(rounds):
        for i, doc in enumerate(docs):
            updates: list[bytes] = []
            sub = doc.observe(lambda event, into=updates: into.append(event.update))
            logs = doc.get("food_logs", type=Map)
            workouts = doc.get("workouts", type=Map)
            with doc.transaction():
                workouts[f"w{r}"] = Map({"name": f"squat {r}", "sets": r, "reps": 5})
                if r % 3 == 0:
                    logs[f"f{r}"] = Map({"food_id": str(uuid.UUID(int=r + 1)),
                                         "quantity_g": 100.0, "meal_type": "lunch",
                                         "date": "2024-05-0" + str(1 + r % 9)})
                if r % 4 == 3:
                    del workouts[f"w{r - 1}"]
            doc.unobserve(sub)
            made.extend((i, u) for u in updates)
    return made


def _content(updates: list[bytes]) -> dict:
    doc: Doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return {name: doc.get(name, type=Map).to_py() for name in ("workouts", "food_logs")}


async def _fill(conn: asyncpg.Connection) -> dict[str, object]:
    """Rows of every table through the old schema; what the documents must load to."""
    users = [await conn.fetchval(
        "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
        f"m{i}@example.com") for i in range(3)]
    keys = [(users[i % 3], f"doc{i}") for i in range(7)]
    doc_ids = [await conn.fetchval(
        "INSERT INTO documents (user_id, name) VALUES ($1, $2) RETURNING id", *key)
        for key in keys]
    # A document made and never written to: no updates, counter 0.
    await conn.execute("INSERT INTO documents (user_id, name) VALUES ($1, 'empty')", users[0])
    edits = _edits(len(keys), 12)
    for i, update in edits:  # one row each, in turns: the identity interleaves documents
        await conn.execute("INSERT INTO doc_updates (doc_id, data) VALUES ($1, $2)",
                           doc_ids[i], update)
    # Compaction as 001-005 did it: rows 2..6 of document 0 become one row keeping the
    # newest replaced seq (a hole in its seqs), and a snapshot cut there.
    seqs = [r[0] for r in await conn.fetch(
        "SELECT seq FROM doc_updates WHERE doc_id = $1 ORDER BY seq", doc_ids[0])]
    replaced = seqs[1:6]
    rows = await conn.fetch("SELECT data FROM doc_updates WHERE seq = ANY($1) ORDER BY seq",
                            replaced)
    merged = merge([r[0] for r in rows])
    await conn.execute("DELETE FROM doc_updates WHERE seq = ANY($1)", replaced)
    await conn.execute("INSERT INTO doc_updates (seq, doc_id, data) OVERRIDING SYSTEM VALUE"
                       " VALUES ($1, $2, $3)", replaced[-1], doc_ids[0], merged)
    for n in range(3):
        await conn.execute("INSERT INTO doc_snapshots (doc_id, cut_seq, data, taken_at)"
                           " VALUES ($1, $2, $3, now() - make_interval(days => $4))",
                           doc_ids[n], replaced[-1], merged, n)
    for user in users:
        await conn.execute("INSERT INTO consents (user_id, document, version)"
                           " VALUES ($1, 'terms', '1'), ($1, 'privacy_policy', '2')", user)
        await conn.execute(
            "INSERT INTO images (user_id, doc_name, content_type, width, height, size, data)"
            " VALUES ($1, 'doc0', 'image/png', 10, 10, 3, 'abc')", user)
    await conn.execute(
        "INSERT INTO foods (name, calories, protein, carbs, fat, created_by)"
        " VALUES ('Oats, rolled', 380, 13, 68, 7, $1)", users[1])
    await conn.execute("INSERT INTO food_log_changes (doc_id) SELECT unnest($1::bigint[])",
                       doc_ids[:4])
    await conn.execute(
        "INSERT INTO food_log_counts (doc_id, food_id, day, logs)"
        " SELECT d, $2, $3, 2 FROM unnest($1::bigint[]) AS d",
        doc_ids, uuid.UUID(int=1), date(2024, 5, 1))
    await conn.execute(
        "INSERT INTO audit_log (user_id, request_id, action, resource_type, email)"
        " VALUES ($1, 'r1', 'login', 'session', NULL), (NULL, 'r2', 'login_failed', 'session',"
        " 'who@example.com')", users[0])
    expected = {}
    for n, key in enumerate(keys):
        stored = [r[0] for r in await conn.fetch(
            "SELECT data FROM doc_updates WHERE doc_id = $1 ORDER BY seq", doc_ids[n])]
        expected[json.dumps([str(key[0]), key[1]])] = _content(stored)
        assert _content(stored) == _content([u for i, u in edits if i == n])
    return expected


async def _snapshot_of(conn: asyncpg.Connection) -> dict[str, list[dict]]:
    """Every row of every table, as comparable dicts (the columns 006 adds left out)."""
    out = {}
    for table in TABLES:
        rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM {table}")]  # noqa: S608
        for row in rows:
            for added in _ADDED.get(table, ()):
                row.pop(added, None)
        out[table] = sorted(json.dumps(r, default=str, sort_keys=True) for r in rows)
    return out


async def test_006_keeps_every_row_and_numbers_each_documents_updates(old_pool):
    async with old_pool.acquire() as conn:
        expected = await _fill(conn)
        before = await _snapshot_of(conn)
        old_order = await conn.fetch("SELECT doc_id, seq FROM doc_updates ORDER BY doc_id, seq")
    assert await migrate(old_pool, until=6) == ["006_citus_ready.sql"]

    async with old_pool.acquire() as conn:
        assert await _snapshot_of(conn) == before  # every row, every value, kept
        # The seqs are kept, so each document's order is too.
        assert await conn.fetch(
            "SELECT doc_id, seq FROM doc_updates ORDER BY doc_id, seq") == old_order
        # Each row carries its document's owner.
        assert await conn.fetchval(
            "SELECT count(*) FROM doc_updates u JOIN documents d"
            " ON d.user_id = u.user_id AND d.id = u.doc_id") == len(old_order)
        for table in ("doc_snapshots", "food_log_changes", "food_log_counts"):
            assert await conn.fetchval(  # noqa: S608
                f"SELECT count(*) FROM {table} t LEFT JOIN documents d"
                " ON d.user_id = t.user_id AND d.id = t.doc_id WHERE d.id IS NULL") == 0
        # Each counter is its document's highest seq (0 for one never written to).
        counters = await conn.fetch(
            "SELECT d.last_seq, coalesce(max(u.seq), 0) AS top FROM documents d"
            " LEFT JOIN doc_updates u ON u.user_id = d.user_id AND u.doc_id = d.id"
            " GROUP BY d.user_id, d.id")
        assert len(counters) == 8 and all(r["last_seq"] == r["top"] for r in counters)
        assert sum(r["last_seq"] == 0 for r in counters) == 1

    log = UpdateLog(old_pool)
    keys = [tuple(json.loads(k)) for k in expected]
    loaded = await log.load_many([(uuid.UUID(u), n) for u, n in keys])
    for key, stored in zip(expected, loaded, strict=True):
        assert stored is not None and _content(stored.updates) == expected[key]

    # The next update of a document takes the seq after its counter, and no other
    # document's counter moves.
    first = loaded[0]
    assert first is not None
    user_id = uuid.UUID(keys[0][0])
    other_counters = await old_pool.fetch(
        "SELECT id, last_seq FROM documents WHERE id <> $1 ORDER BY id", first.doc_id)
    extra = Doc()
    for update in first.updates:
        extra.apply_update(update)
    changes: list[bytes] = []
    extra.observe(lambda event: changes.append(event.update))
    extra.get("workouts", type=Map)["after"] = "migration"
    assert await log.append_many([first.doc_id, first.doc_id], [changes[0], changes[0]],
                                 [user_id, user_id]) == [first.last_seq + 1, first.last_seq + 2]
    assert await old_pool.fetch(
        "SELECT id, last_seq FROM documents WHERE id <> $1 ORDER BY id",
        first.doc_id) == other_counters
    again = (await log.load_many([(user_id, keys[0][1])]))[0]
    assert again is not None and again.last_seq == first.last_seq + 2
    assert _content(again.updates)["workouts"]["after"] == "migration"
