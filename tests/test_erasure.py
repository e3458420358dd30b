"""Erasing an account (docs/gdpr.md, "Erasure"): everything goes, at once, everywhere,
all or nothing; through the REST route and through ``modi-sync user delete``."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import asyncpg
import pytest
from pycrdt import Doc, Map
from redis.asyncio import Redis

from modi_sync.app_keys import DOCUMENTS
from storage.audit import AuditEntry
from storage.erasure import erase_account
from storage.foods import FoodStore, NewFood

from .conftest import Client, register, run_cli, synced
from .yclient import YClient, eventually

PASSWORD = "correct horse"


@dataclass
class Account:
    pair: dict
    id: UUID
    email: str
    sockets: list[YClient]
    verified_food: UUID
    unverified_food: UUID


def _bearer(pair: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


def _update(note: str) -> bytes:
    doc: Doc = Doc()
    doc.get("weights", type=Map)[str(uuid.uuid4())] = Map({"weight": 81.0, "note": note})
    return doc.get_update()


async def _full_account(first: Client, second: Client, pool: asyncpg.Pool) -> Account:
    """A user with every kind of data the server keeps, and a socket on each instance."""
    email = f"erase-{uuid.uuid4().hex[:10]}@example.com"
    # Before the account exists: an entry that names the email, and nothing else.
    await first.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    resp = await first.post("/api/v1/auth/register", json={
        "email": email, "password": PASSWORD, "privacy_policy_version": "1"})
    pair = (await resp.json())["data"]
    user_id = UUID(pair["user"]["id"])
    await first.post("/api/v1/auth/login", json={"email": email, "password": "wrong guess"})
    login = await first.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status == 200  # a second session: more refresh tokens

    documents = first.app[DOCUMENTS]
    for name in ("log", "plan"):
        for n in range(3):
            await documents.apply(user_id, name, _update(f"{name} {n}"))
        info = await documents.info(user_id, name)
        await documents.compact(info, snapshot_every=timedelta(0))  # a dated snapshot
        await documents.apply(user_id, name, _update(f"{name} after"))
    resp = await first.get("/api/v1/docs", headers=_bearer(pair))  # a rate-limit key
    assert resp.status == 200

    foods = FoodStore(pool)
    verified = await foods.contribute(user_id, NewFood("Rye bread", Decimal(250), Decimal(8),
                                                       Decimal(48), Decimal("1.5")), 10)
    assert await foods.verify(verified.id)
    unverified = await foods.contribute(user_id, NewFood("Odd bar", Decimal(400), Decimal(5),
                                                         Decimal(60), Decimal(15)), 10)
    sockets = [await synced(first, pair["access_token"], "log"),
               await synced(second, pair["access_token"], "plan")]
    return Account(pair, user_id, email, sockets, verified.id, unverified.id)


async def _tables_naming(db: asyncpg.Connection, *needles: str) -> dict[str, list[str]]:
    """Every row of every table whose text holds any of ``needles``, by table."""
    tables = [r[0] for r in await db.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    assert {"users", "documents", "doc_updates", "doc_snapshots", "consents", "audit_log",
            "foods"} <= set(tables)
    found: dict[str, list[str]] = {}
    for table in tables:
        rows = await db.fetch(
            f'SELECT t::text FROM "{table}" t WHERE '  # noqa: S608 - names from the catalog
            + " OR ".join(f"t::text ILIKE ${i + 1}" for i in range(len(needles))),
            *(f"%{n}%" for n in needles))
        if rows:
            found[table] = [r[0] for r in rows]
    return found


async def _redis_naming(redis: Redis, *needles: str) -> list[str]:
    """Every Redis key whose name or value holds any of ``needles``."""
    hits = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: object = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        else:
            value = kind  # a stream or a module's type: none of ours
        text = (repr(key) + repr(value)).lower()
        if any(n.lower() in text for n in needles):
            hits.append(key.decode())
    return hits


async def _assert_erased(account: Account, db: asyncpg.Connection, redis: Redis) -> None:
    found = await _tables_naming(db, str(account.id), account.email)
    audit = found.pop("audit_log", [])
    assert found == {}, found
    assert audit  # the entries are kept ...
    rows = await db.fetch("SELECT email, ip, action FROM audit_log WHERE user_id = $1",
                          account.id)
    assert {r["action"] for r in rows} >= {"auth.login", "auth.login_failed", "account.deleted"}
    assert all(r["email"] is None and r["ip"] is None for r in rows)  # ... stripped
    assert not any(account.email.lower() in line.lower() for line in audit)
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE lower(email) = lower($1)",
                             account.email) == 0
    assert await _redis_naming(redis, str(account.id), account.email) == []

    # The verified contribution stays, without its author; the other is gone.
    kept = await db.fetchrow("SELECT created_by FROM foods WHERE id = $1", account.verified_food)
    assert kept is not None and kept["created_by"] is None
    assert await db.fetchval("SELECT count(*) FROM foods WHERE id = $1",
                             account.unverified_food) == 0


async def _sockets_closed(account: Account) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    codes = await asyncio.gather(*(s.wait_closed(timeout=1.0) for s in account.sockets))
    assert codes == [4401, 4401]
    assert loop.time() - started < 1.0


async def test_erasing_through_the_route_leaves_nothing_but_stripped_audit_entries(
        make_client, pool, db, redis):
    first, second = await make_client(), await make_client()
    account = await _full_account(first, second, pool)
    assert str(account.id) in str(await _tables_naming(db, str(account.id)))  # could fail
    assert await _redis_naming(redis, str(account.id))

    resp = await first.delete("/api/v1/auth/account", json={"password": PASSWORD},
                              headers=_bearer(account.pair))
    assert resp.status == 204
    await _sockets_closed(account)
    await _assert_erased(account, db, redis)
    for client in (first, second):  # and its tokens are refused on every instance
        resp = await client.get("/api/v1/docs", headers=_bearer(account.pair))
        assert resp.status == 401
        refresh = await client.post("/api/v1/auth/refresh",
                                    json={"refresh_token": account.pair["refresh_token"]})
        assert refresh.status == 401
    # No token can be minted for it again, and the scrub left nothing behind meanwhile.
    assert await _redis_naming(redis, str(account.id), account.email) == []


async def test_erasing_through_the_command_is_the_same(make_client, pool, db, redis, services):
    first, second = await make_client(), await make_client()
    account = await _full_account(first, second, pool)
    code, out, err = await run_cli(services, "user", "delete", account.email, "--yes")
    assert code == 0, err
    await _sockets_closed(account)
    await _assert_erased(account, db, redis)
    again, _, err = await run_cli(services, "user", "delete", str(account.id), "--yes")
    assert again == 3 and "no account" in err


async def test_a_crash_midway_leaves_the_account_whole(make_client, pool, db):
    client = await make_client()
    pair = await register(client)
    user_id = UUID(pair["user"]["id"])
    await client.app[DOCUMENTS].apply(user_id, "log", _update("still here"))
    food = await FoodStore(pool).contribute(user_id, NewFood("Bar", Decimal(1), Decimal(1),
                                                             Decimal(1), Decimal(1)), 10)
    await client.post("/api/v1/auth/login",
                      json={"email": pair["user"]["email"], "password": "a wrong one"})
    before = await db.fetchval("SELECT count(*) FROM audit_log WHERE user_id = $1 "
                               "AND ip IS NOT NULL", user_id)
    assert before >= 1

    # Hold a lock the erasure needs last (the users row's cascade into doc_updates), so
    # it stops after dropping the food and stripping the audit entries; then kill it.
    blocker = await asyncpg.connect(dsn=pool._connect_args[0])  # noqa: SLF001
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM doc_updates WHERE user_id = $1 FOR UPDATE", user_id)
            erasing = asyncio.create_task(erase_account(pool, user_id, AuditEntry(
                "test", "account.deleted", "user", user_id)))

            async def stuck() -> int | None:
                # Waiting for the lock; on Citus, for the worker that waits for it.
                pid: int | None = await db.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                    "AND wait_event_type IN ('Lock', 'IPC', 'Client', 'Extension') "
                    "AND query LIKE 'DELETE FROM users%' AND datname = current_database()")
                return pid

            await eventually(stuck)
            assert await db.fetchval("SELECT pg_terminate_backend($1::int)", await stuck())
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await erasing
    finally:
        await blocker.close()

    assert await db.fetchval("SELECT count(*) FROM users WHERE id = $1", user_id) == 1
    assert await db.fetchval("SELECT count(*) FROM foods WHERE id = $1", food.id) == 1
    assert await db.fetchval("SELECT count(*) FROM documents WHERE user_id = $1", user_id) == 1
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE user_id = $1 "
                             "AND ip IS NOT NULL", user_id) == before
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE user_id = $1 "
                             "AND action = 'account.deleted'", user_id) == 0
    doc = await client.get("/api/v1/docs/log", headers=_bearer(pair))
    assert [w["note"] for w in (await doc.json())["data"]["weights"].values()] == ["still here"]
