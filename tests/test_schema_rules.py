"""The rules that keep the schema ready for Citus by user (issue 25, docs/scaling.md).

Read from the catalog, for every table of the public schema that is not listed below
as shared or local (each with its reason):

- it has a ``user_id`` column;
- its primary key, and every unique constraint or unique index, include ``user_id``
  (Citus enforces uniqueness only within a shard);
- every foreign key to another per-user table includes ``user_id`` on both sides (a
  row references its own user's rows, on the same shard);
- no column of it is an identity or takes a sequence's ``nextval``, but the row ids
  listed in ``ROW_IDS``: one document's updates are ordered by the document's own
  counter (``documents.last_seq``), never by a sequence shared by every node.

A later table that breaks a rule fails here: the rules are checked on deliberately bad
tables in a scratch schema too, so the checks themselves are known to bite.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

# Tables every user shares, or that only the coordinator holds.
SHARED = {
    "users": "the accounts: a reference table (one row per user, its unique email "
             "enforced everywhere)",
    "foods": "the shared food database: a reference table",
    "food_words": "the lexemes of foods, for typo correction: a reference table",
    "schema_migrations": "which migrations ran: one row per migration, no user",
    "audit_log": "a local table of the coordinator: it holds rows without a user "
                 "(failed logins), and its append-only triggers",
}

REFERENCE = ("users", "foods", "food_words")  # of SHARED: a copy on every Citus node

# Identity columns of per-user tables that name a row and order nothing that needs a
# global order.
ROW_IDS = {
    ("documents", "id"): "a document's row id; documents are ordered by name",
    ("doc_snapshots", "id"): "a snapshot's id; snapshots are ordered by taken_at",
    ("consents", "id"): "pages one user's consent rows; they are written one at a time "
                        "by that user's own requests",
}

_TABLES = """
SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname
"""
_COLUMNS = """
SELECT a.attname, a.attidentity <> '' AS identity,
       coalesce(pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%', false) AS sequence
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
"""
# Primary keys, unique constraints and unique indexes (constraints own an index too).
_UNIQUE = """
SELECT i.indexrelid::regclass::text AS name, i.indisprimary AS primary,
       ARRAY(SELECT a.attname FROM unnest(i.indkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n) AS columns
FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique
"""
_FOREIGN = """
SELECT con.conname, con.confrelid::regclass::text AS target,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n) AS columns,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n) AS targets
FROM pg_constraint con WHERE con.conrelid = $1 AND con.contype = 'f'
"""


async def broken_rules(db: asyncpg.Connection, schema: str = "public") -> list[str]:
    """Every rule a per-user table of ``schema`` breaks, one line each."""
    tables = {r["relname"]: r["oid"] for r in await db.fetch(_TABLES, schema)}
    per_user = {name for name in tables if name not in SHARED}
    broken: list[str] = []
    for name in sorted(per_user):
        oid = tables[name]
        columns = await db.fetch(_COLUMNS, oid)
        if "user_id" not in {c["attname"] for c in columns}:
            broken.append(f"{name}: no user_id column")
        unique = await db.fetch(_UNIQUE, oid)
        if not any(u["primary"] for u in unique):
            broken.append(f"{name}: no primary key")
        for u in unique:
            if "user_id" not in u["columns"]:
                kind = "primary key" if u["primary"] else "unique index"
                broken.append(f"{name}: {kind} {u['name']} {u['columns']} lacks user_id")
        for fk in await db.fetch(_FOREIGN, oid):
            target = fk["target"].rsplit(".", 1)[-1]
            if target in per_user and not ("user_id" in fk["columns"]
                                           and "user_id" in fk["targets"]):
                broken.append(f"{name}: foreign key {fk['conname']} to {target} "
                              f"{fk['columns']} lacks user_id")
        for c in columns:
            if (c["identity"] or c["sequence"]) and (name, c["attname"]) not in ROW_IDS:
                broken.append(f"{name}.{c['attname']}: ordered by an identity or sequence")
    return broken


async def test_every_per_user_table_keeps_the_rules(pool: asyncpg.Pool, db):
    assert await broken_rules(db) == []


async def test_the_shared_tables_exist_and_the_row_ids_are_no_order(pool, db):
    """The lists above name real tables and columns (a renamed table would otherwise
    leave a stale exemption), and the updates' order is the documents' own counter."""
    tables = {r["relname"] for r in await db.fetch(_TABLES, "public")}
    assert set(SHARED) <= tables
    assert {t for t, _ in ROW_IDS} <= tables - set(SHARED)
    seq = await db.fetchrow(
        "SELECT is_identity, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'doc_updates'"
        " AND column_name = 'seq'")
    assert seq["is_identity"] == "NO" and seq["column_default"] is None
    assert await db.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'"
        " AND table_name = 'documents' AND column_name = 'last_seq'") == 1


async def test_on_citus_each_table_is_placed_as_docs_scaling_says(pool, db):
    """With citus in the database (MODI_TEST_CITUS_WORKERS, docs/scaling.md): every
    per-user table distributed by user_id, co-located with documents; the shared ones
    reference tables; audit_log and schema_migrations the coordinator's alone. A later
    migration that forgets to distribute its table fails here."""
    if not await db.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"):
        pytest.skip("no citus in this database")
    placed = {r["table_name"]: r for r in await db.fetch(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id"
        " FROM citus_tables")}
    tables = {r["relname"] for r in await db.fetch(_TABLES, "public")}
    colocated = placed["documents"]["colocation_id"]
    for name in sorted(tables - set(SHARED)):
        assert (placed[name]["citus_table_type"], placed[name]["distribution_column"],
                placed[name]["colocation_id"]) == ("distributed", "user_id", colocated), name
    for name in REFERENCE:
        assert placed[name]["citus_table_type"] == "reference", name
    assert not set(SHARED) - set(REFERENCE) & set(placed)


@pytest.mark.parametrize(("ddl", "broken"), [
    ("CREATE TABLE {s}.notes (id bigint PRIMARY KEY, body text)",
     ["notes: no user_id column", "notes: primary key {s}.notes_pkey ['id'] lacks user_id"]),
    ("CREATE TABLE {s}.notes (user_id uuid, id bigint, tag text,"
     " PRIMARY KEY (user_id, id), UNIQUE (tag))",
     ["notes: unique index {s}.notes_tag_key ['tag'] lacks user_id"]),
    ("CREATE TABLE {s}.notes (user_id uuid, id bigint, PRIMARY KEY (user_id, id));"
     " CREATE UNIQUE INDEX notes_lower ON {s}.notes (id)",
     ["notes: unique index {s}.notes_lower ['id'] lacks user_id"]),
    ("CREATE TABLE {s}.documents (user_id uuid, id bigint, PRIMARY KEY (user_id, id),"
     " UNIQUE (id));"
     " CREATE TABLE {s}.notes (user_id uuid, doc_id bigint REFERENCES {s}.documents (id),"
     " PRIMARY KEY (user_id, doc_id))",
     ["documents: unique index {s}.documents_id_key ['id'] lacks user_id",
      "notes: foreign key notes_doc_id_fkey to documents ['doc_id'] lacks user_id"]),
    ("CREATE TABLE {s}.notes (user_id uuid,"
     " seq bigint GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (user_id, seq))",
     ["notes.seq: ordered by an identity or sequence"]),
    ("CREATE TABLE {s}.notes (user_id uuid, seq bigserial, PRIMARY KEY (user_id, seq))",
     ["notes.seq: ordered by an identity or sequence"]),
    ("CREATE TABLE {s}.notes (user_id uuid, body text)", ["notes: no primary key"]),
    ("CREATE TABLE {s}.documents (user_id uuid, id bigint, PRIMARY KEY (user_id, id));"
     " CREATE TABLE {s}.notes (user_id uuid, doc_id bigint, PRIMARY KEY (user_id, doc_id),"
     " FOREIGN KEY (user_id, doc_id) REFERENCES {s}.documents (user_id, id))",
     []),  # as it should be: nothing to report
])
async def test_a_table_that_breaks_a_rule_is_caught(db, ddl, broken):
    schema = f"rules_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE SCHEMA {schema}")
    try:
        await db.execute(ddl.format(s=schema))
        assert await broken_rules(db, schema) == [b.format(s=schema) for b in broken]
    finally:
        await db.execute(f"DROP SCHEMA {schema} CASCADE")
