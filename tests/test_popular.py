"""The popular list's aggregator (modi_sync/popular.py, storage/food_counts.py): the group
commit notes the documents it writes, a pass recounts only those, and the list sums the
counts of the last 30 days, across users."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pycrdt import Doc, Map

from modi_sync.app_keys import DOCUMENTS, POOL, REDIS
from modi_sync.documents import Documents
from modi_sync.popular import PopularAggregator, popular_food_ids
from storage.food_counts import POPULAR_LOCK

from .conftest import Client, register
from .yclient import eventually

TODAY = date(2030, 6, 15)  # the aggregator's clock: counts do not depend on the real day
DAY = timedelta(days=1)


class Diary:
    """A user's document with a food log, written through the documents service."""

    def __init__(self, documents: Documents, user_id: uuid.UUID, name: str = "default") -> None:
        self.documents, self.user_id, self.name = documents, user_id, name
        self.doc: Doc = Doc()
        self.logs = self.doc.get("food_logs", type=Map)

    async def log(self, food_id: Any, day: Any = None, **fields: Any) -> str:
        day = TODAY.isoformat() if day is None else day
        entry_id = str(uuid.uuid4())
        entry = {"food_id": str(food_id) if isinstance(food_id, uuid.UUID) else food_id,
                 "quantity_g": 100.0, "meal_type": "lunch", "date": day, **fields}
        await self._write(lambda: self.logs.__setitem__(entry_id, Map(entry)))
        return entry_id

    async def put_raw(self, key: str, value: Any) -> None:
        await self._write(lambda: self.logs.__setitem__(key, value))

    async def remove(self, entry_id: str) -> None:
        await self._write(lambda: self.logs.pop(entry_id))

    async def _write(self, change: Any) -> None:
        before = self.doc.get_state()
        change()
        await self.documents.apply(self.user_id, self.name, self.doc.get_update(before))

    async def doc_id(self) -> int:
        return (await self.documents.info(self.user_id, self.name)).doc_id


@pytest.fixture
async def app_client(make_client) -> Client:
    return await make_client(popular_interval_seconds=0)  # passes only when a test runs one


@pytest.fixture
def aggregator(app_client: Client) -> PopularAggregator:
    return PopularAggregator(app_client.app[DOCUMENTS], app_client.app[POOL],
                             app_client.app[REDIS], today=lambda: TODAY)


async def _diary(client: Client, name: str = "default") -> Diary:
    user_id = uuid.UUID((await register(client))["user"]["id"])
    return Diary(client.app[DOCUMENTS], user_id, name)


async def _foods(db: asyncpg.Connection, n: int) -> list[uuid.UUID]:
    rows = await db.fetch(
        "INSERT INTO foods (name, calories, protein, carbs, fat, verified)"
        " SELECT 'popular test food ' || g, 100, 1, 2, 3, true FROM generate_series(1, $1) g"
        " RETURNING id", n)
    return [r["id"] for r in rows]


async def _counts(db: asyncpg.Connection, food_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await db.fetch("SELECT food_id, sum(logs) FROM food_log_counts"
                          " WHERE food_id = ANY($1::uuid[]) GROUP BY food_id", food_ids)
    return {r[0]: r[1] for r in rows}


async def _popular(pool: asyncpg.Pool, food_ids: list[uuid.UUID]) -> list[tuple[uuid.UUID, int]]:
    """The list, narrowed to this test's foods (other tests' foods share the table)."""
    ranked = await popular_food_ids(pool, 10_000, today=TODAY)
    return [(f, n) for f, n in ranked if f in food_ids]


async def test_the_group_commit_notes_each_document_it_writes(app_client, db):
    diary = await _diary(app_client)
    await diary.log(uuid.uuid4())
    await diary.log(uuid.uuid4())
    doc_id = await diary.doc_id()
    assert await db.fetchval("SELECT count(*) FROM food_log_changes WHERE doc_id = $1",
                             doc_id) == 1


async def test_entries_are_counted_across_users_most_logged_first(app_client, aggregator, db):
    apple, bread, cheese = await _foods(db, 3)
    ann, bob = await _diary(app_client), await _diary(app_client)
    for food in (apple, apple, bread):
        await ann.log(food)
    await ann.log(apple, (TODAY - 3 * DAY).isoformat())
    for food in (apple, bread, cheese):
        await bob.log(food)

    report = await aggregator.run_once()
    assert report is not None
    assert {await ann.doc_id(), await bob.doc_id()} <= set(report.read)
    assert await _popular(app_client.app[POOL], [apple, bread, cheese]) == [
        (apple, 4), (bread, 2), (cheese, 1)]


async def test_ties_are_ordered_by_food_id(app_client, aggregator, db):
    foods = await _foods(db, 3)
    diary = await _diary(app_client)
    for food in foods:
        await diary.log(food)
    await aggregator.run_once()
    assert await _popular(app_client.app[POOL], foods) == [(f, 1) for f in sorted(foods)]


async def test_only_the_last_30_days_count(app_client, aggregator, db):
    kept_edge, too_old, tomorrow, far_ahead = await _foods(db, 4)
    diary = await _diary(app_client)
    await diary.log(kept_edge, (TODAY - 30 * DAY).isoformat())
    await diary.log(too_old, (TODAY - 31 * DAY).isoformat())
    await diary.log(tomorrow, (TODAY + DAY).isoformat())  # east of UTC it is tomorrow
    await diary.log(far_ahead, "2099-01-01")
    await aggregator.run_once()
    assert await _counts(db, [kept_edge, too_old, tomorrow, far_ahead]) == {
        kept_edge: 1, tomorrow: 1}


async def test_rows_older_than_the_window_age_out(app_client, db):
    food, = await _foods(db, 1)
    diary = await _diary(app_client)
    await diary.log(food, (TODAY - 10 * DAY).isoformat())
    documents, pool = app_client.app[DOCUMENTS], app_client.app[POOL]
    redis = app_client.app[REDIS]
    await PopularAggregator(documents, pool, redis, today=lambda: TODAY).run_once()
    assert await _popular(pool, [food]) == [(food, 1)]
    # Three weeks on, the document was never written again: its row is out of the list
    # and a pass prunes it.
    later = TODAY + 21 * DAY
    assert food not in dict(await popular_food_ids(pool, 10_000, today=later))
    await PopularAggregator(documents, pool, redis, today=lambda: later).run_once()
    assert await _counts(db, [food]) == {}


async def test_an_edit_that_removes_an_entry_lowers_the_count(app_client, aggregator, db):
    food, = await _foods(db, 1)
    diary = await _diary(app_client)
    first = await diary.log(food)
    await diary.log(food)
    await aggregator.run_once()
    assert await _counts(db, [food]) == {food: 2}

    await diary.remove(first)
    await aggregator.run_once()
    assert await _counts(db, [food]) == {food: 1}


async def test_a_pass_reads_only_the_documents_noted_since_the_last(app_client, aggregator, db):
    food, = await _foods(db, 1)
    written, quiet = await _diary(app_client), await _diary(app_client)
    await written.log(food)
    await quiet.log(food)
    await aggregator.run_once()
    assert await _counts(db, [food]) == {food: 2}

    await written.log(food)
    # The quiet document changes in storage, but nothing notes it: a pass that read it
    # would count its new entry. Only the written one may be read.
    await quiet.log(food)
    await db.execute("DELETE FROM food_log_changes WHERE doc_id = $1", await quiet.doc_id())
    noted = {r[0] for r in await db.fetch("SELECT doc_id FROM food_log_changes")}

    report = await aggregator.run_once()
    assert report is not None
    assert await written.doc_id() in report.read
    assert set(report.read) <= noted and await quiet.doc_id() not in report.read
    assert await _counts(db, [food]) == {food: 3}  # 2 written, 1 quiet (its last unseen)

    report = await aggregator.run_once()  # nothing written since: nothing read
    assert report is not None and report.read == [] and report.taken == 0


async def test_deleting_a_document_removes_its_counts(app_client, aggregator, db):
    food, = await _foods(db, 1)
    kept, deleted = await _diary(app_client), await _diary(app_client, "other")
    await kept.log(food)
    await deleted.log(food)
    await aggregator.run_once()
    assert await _counts(db, [food]) == {food: 2}

    await deleted.documents.delete(deleted.user_id, deleted.name)
    assert await _counts(db, [food]) == {food: 1}
    assert (await aggregator.run_once()) is not None


async def test_garbage_entries_are_ignored(app_client, aggregator, db):
    food, = await _foods(db, 1)
    diary = await _diary(app_client)
    await diary.log(food)
    await diary.log(food, logged_at="2030-06-15T23:30:00-05:00", date="2030-06-16")
    await diary.log("not-a-uuid")
    await diary.log(12345)
    await diary.log(None)
    await diary.log(food, "2030-13-45")
    await diary.log(food, "yesterday")
    await diary.log(food, 20300615)
    await diary.log(food, "2030-06-15T10:00:00")  # a time is not a day
    await diary.put_raw(str(uuid.uuid4()), "an entry that is not a map")
    await diary.put_raw(str(uuid.uuid4()), 42)
    report = await aggregator.run_once()
    assert report is not None and await diary.doc_id() in report.read
    assert await _counts(db, [food]) == {food: 2}
    assert await db.fetchval("SELECT count(*) FROM food_log_counts WHERE doc_id = $1",
                             await diary.doc_id()) == 1


async def test_one_document_counts_a_food_at_most_20_times_a_day(app_client, aggregator, db):
    food, = await _foods(db, 1)
    diary = await _diary(app_client)
    before = diary.doc.get_state()
    for _ in range(25):
        diary.logs[str(uuid.uuid4())] = Map({"food_id": str(food), "quantity_g": 1.0,
                                             "meal_type": "snack", "date": TODAY.isoformat()})
    await diary.documents.apply(diary.user_id, diary.name, diary.doc.get_update(before))
    await aggregator.run_once()
    assert await _counts(db, [food]) == {food: 20}


class _FailingDocuments:
    """The documents service, but its second read of a pass fails (a database that went
    away mid-pass, say)."""

    def __init__(self, documents: Documents) -> None:
        self._documents = documents
        self.reads = 0

    async def stored_json(self, *args: Any) -> dict[int, dict[str, Any]]:
        self.reads += 1
        if self.reads == 2:
            raise ConnectionError("gone")
        return await self._documents.stored_json(*args)


async def _noted(db: asyncpg.Connection, table: str) -> set[int]:
    return {r[0] for r in await db.fetch(f"SELECT doc_id FROM {table}")}


async def _three_noted(client: Client, aggregator: PopularAggregator,
                       db: asyncpg.Connection) -> tuple[uuid.UUID, set[int]]:
    """A food, logged once in each of three new documents, the only ones noted."""
    food, = await _foods(db, 1)
    await aggregator.run_once()  # nothing else noted
    diaries = [await _diary(client) for _ in range(3)]
    for diary in diaries:
        await diary.log(food)
    return food, {await d.doc_id() for d in diaries}


async def test_a_failed_pass_leaves_its_notes_to_the_next(app_client, aggregator, db,
                                                          monkeypatch):
    monkeypatch.setattr("modi_sync.popular.READ_AT_ONCE", 1)  # one document per read
    food, noted = await _three_noted(app_client, aggregator, db)

    failing = PopularAggregator(_FailingDocuments(app_client.app[DOCUMENTS]),  # type: ignore[arg-type]
                                app_client.app[POOL], app_client.app[REDIS],
                                today=lambda: TODAY)
    with pytest.raises(ConnectionError):
        await failing.run_once()
    left = await _noted(db, "food_log_taken")
    assert len(noted - left) == 1 and left <= noted  # the one read before the failure ...
    assert await _counts(db, [food]) == {food: 1}  # ... was counted, the other two kept
    assert not await _noted(db, "food_log_changes") & noted

    report = await aggregator.run_once()  # the next pass notes them again and counts them
    assert report is not None and report.restored == 2 and set(report.read) == left
    assert await _counts(db, [food]) == {food: 3}
    assert not await _noted(db, "food_log_taken")


_TAKE_AND_DIE = """
import asyncio, os, signal, sys
from storage.database import create_pool
from storage.food_counts import FoodCounts

async def main():
    pool = await create_pool(sys.argv[1], max_size=1)
    async with FoodCounts(pool).exclusive() as counts:
        taken = await counts.take_changed(500)
        print(len(taken), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # between the take and the counts

asyncio.run(main())
"""


async def test_a_pass_killed_after_taking_its_notes_loses_none(app_client, aggregator, db,
                                                               services):
    food, noted = await _three_noted(app_client, aggregator, db)

    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TAKE_AND_DIE, services.database_url,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(killed.communicate(), 60)
    assert killed.returncode == -signal.SIGKILL and int(out) >= 3
    assert await _noted(db, "food_log_taken") >= noted
    assert not await _noted(db, "food_log_changes") & noted

    report = await aggregator.run_once()  # its lock went with its connection
    assert report is not None and report.restored >= 3 and noted <= set(report.read)
    assert await _counts(db, [food]) == {food: 3}


async def test_a_pass_skips_while_another_instance_runs_one(app_client, aggregator, db):
    diary = await _diary(app_client)
    await diary.log(uuid.uuid4())
    assert await db.fetchval("SELECT pg_try_advisory_lock($1::bigint)", POPULAR_LOCK)
    try:
        assert await aggregator.run_once() is None
    finally:
        await db.fetchval("SELECT pg_advisory_unlock($1::bigint)", POPULAR_LOCK)
    assert await aggregator.run_once() is not None


async def test_the_server_runs_a_pass_on_its_schedule(make_client, db):
    client = await make_client(popular_interval_seconds=0.2)
    assert [t for t in asyncio.all_tasks() if t.get_name() == "popular aggregator"]
    food, = await _foods(db, 1)
    diary = await _diary(client)
    await diary.log(food, date.today().isoformat())

    async def counted() -> bool:
        return await _counts(db, [food]) == {food: 1}

    await eventually(counted)
    await client.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "popular aggregator"]


async def test_no_scheduled_pass_with_an_interval_of_zero(app_client):
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "popular aggregator"]


async def test_the_popular_route_lists_verified_foods_and_follows_each_pass(app_client, db):
    verified, = await _foods(db, 1)
    unverified, = await db.fetchval(
        "INSERT INTO foods (name, calories, protein, carbs, fat) "
        "VALUES ('popular unverified', 100, 1, 2, 3) RETURNING array[id]"),
    today = datetime.now(UTC).date()
    aggregator = PopularAggregator(app_client.app[DOCUMENTS], app_client.app[POOL],
                                   app_client.app[REDIS], today=lambda: today)
    pair = await register(app_client)
    headers = {"Authorization": f"Bearer {pair['access_token']}"}

    async def popular() -> dict[str, int]:
        resp = await app_client.get("/api/v1/foods/popular?limit=100", headers=headers)
        assert resp.status == 200, await resp.text()
        return {f["id"]: f["logs"] for f in (await resp.json())["data"]}

    assert str(verified) not in await popular()  # and that answer is now cached
    diary = await _diary(app_client)
    for food, times in ((verified, 2), (unverified, 3)):
        for _ in range(times):
            await diary.log(food, today.isoformat())
    await aggregator.run_once()
    listed = await popular()
    assert listed[str(verified)] == 2  # the pass made the cached answer stale
    assert str(unverified) not in listed
