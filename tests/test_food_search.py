"""Food search over the shipped dataset (USDA SR28): relevance on a table of queries,
and odd strings that must never fail (docs/foods.md, "Search").

The dataset is loaded once into a database of this module's own, and the cache uses a
Redis database of its own: other tests' foods and cached answers cannot leak in."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from modi_sync.food_import import DATASET, import_file
from storage.database import migrate

from .conftest import ServiceUrls, _run_sql, _with_database, register

SEARCH = "/api/v1/foods/search"

# (query, text the top result's name holds), case and accents aside: full words,
# prefixes as typed, typos, brands, multi-word queries, accents and case.
TOP = [
    ("broccoli", "broccoli, raw"),
    ("brocoli", "broccoli, raw"),
    ("spinach", "spinach, raw"),
    ("spinch", "spinach"),
    ("chicken", "chicken"),
    ("chick", "chick"),
    ("chiken", "chicken"),
    ("CHICKEN", "chicken"),
    ("chicken breast", "chicken breast"),
    ("brest", "breast"),
    ("apple", "apples, raw"),
    ("banana raw", "bananas, raw"),
    ("banan", "banana"),
    ("egg", "egg"),
    ("cheddar", "cheese, cheddar"),
    ("cheese", "cheese"),
    ("salmon", "salmon"),
    ("salmn", "salmon"),
    ("avocado", "avocados, raw"),
    ("avocados", "avocados, raw"),
    ("oats", "oats"),
    ("orange juice", "orange juice, raw"),
    ("rice brown", "brown"),
    ("almnd", "almond"),
    ("tomatos", "tomato"),
    ("jalapeño", "jalapeno"),
    ("JALAPENO", "jalapeno"),
    ("mcdonalds", "mcdonald's"),
    ("big mac", "big mac"),
    ("kellogg corn flakes", "corn flakes"),
    ("coca cola", "coca-cola"),
    ("peanut butter", "peanut butter"),
    ("bread whole wheat", "bread"),
]

# Queries whose every result must hold a word: matches, not noise.
ALL_HOLD = [
    ("chicken breast", ["chicken", "breast"]),
    ("big mac", ["big mac"]),
    ("kellogg", ["kellogg"]),
]

ODD = ["'", '"', "\\", "\\'", "&|!():*", "a & b | !c", ":*", "!", "'; DROP TABLE foods; --",
       "😀", "🍗 chicken", "chicken\x00", "\x00", "<script>alert(1)</script>", "%_%",
       "chicken%", "_", "a", "ü", "1", "０", "x" * 100, "(((((((((", "chicken:*&!'",
       "\u200b", "ﬁsh", "NULL", "-1", "1e308", "a " * 50]


def _redis_db(url: str, db: int) -> str:
    if url.startswith("unix://"):
        return f"{url}?db={db}"
    return re.sub(r"(/\d+)?$", f"/{db}", url, count=1)


@pytest.fixture(scope="module")
def dataset_services(services: ServiceUrls) -> Iterator[ServiceUrls]:
    name = f"modi_foods_{uuid.uuid4().hex[:12]}"
    _run_sql(services.database_url, f'CREATE DATABASE "{name}"')
    url = _with_database(services.database_url, name)

    redis_url = _redis_db(services.redis_url, 1)

    async def load() -> None:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        redis = Redis.from_url(redis_url)
        try:
            await migrate(pool)
            report = await import_file(pool, redis, DATASET, on_rejected=pytest.fail)
            assert report.inserted == 8789
        finally:
            await pool.close()
            await redis.aclose()

    asyncio.run(load())
    try:
        yield ServiceUrls(url, redis_url)
    finally:
        _run_sql(services.database_url, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def searcher(make_client, dataset_services):
    client = await make_client(database_url=dataset_services.database_url,
                               redis_url=dataset_services.redis_url)
    pair = await register(client)
    headers = {"Authorization": f"Bearer {pair['access_token']}"}

    async def search(q: str, **params) -> dict:
        resp = await client.get(SEARCH, params={"q": q, **params}, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    return search


def _plain(text: str) -> str:
    return text.lower().replace("ñ", "n")


@pytest.mark.parametrize("q, expected", TOP, ids=[q for q, _ in TOP])
async def test_the_expected_food_comes_first(searcher, q, expected):
    body = await searcher(q)
    assert body["data"], f"no result for {q!r}"
    top = body["data"][0]
    assert expected in _plain(top["name"] + " " + (top["brand"] or "")), \
        [f["name"] for f in body["data"][:5]]


@pytest.mark.parametrize("q, words", ALL_HOLD)
async def test_every_match_holds_the_words(searcher, q, words):
    body = await searcher(q, limit=100)
    assert len(body["data"]) == min(100, body["pagination"]["total"]) > 0
    for food in body["data"]:
        text = _plain(food["name"] + " " + (food["brand"] or ""))
        assert all(w in text for w in words), food["name"]


async def test_pages_follow_each_other_and_count_every_match(searcher):
    first, second = await searcher("chicken", limit=10), await searcher("chicken", limit=10,
                                                                          page=2)
    assert first["pagination"] == {"page": 1, "limit": 10, "total": first["pagination"]["total"],
                                   "total_pages": -(-first["pagination"]["total"] // 10)}
    assert first["pagination"]["total"] > 100
    ids = [f["id"] for f in first["data"] + second["data"]]
    assert len(set(ids)) == 20
    whole = await searcher("chicken", limit=20)
    assert [f["id"] for f in whole["data"]] == ids
    past_the_end = await searcher("chicken", limit=100, page=1000)
    assert past_the_end["data"] == []


async def test_only_stop_words_or_no_words_find_nothing(searcher):
    for q in ("the and of", "!!!", "😀"):
        body = await searcher(q)
        assert (body["data"], body["pagination"]["total"]) == ([], 0)


@pytest.mark.parametrize("q", ODD, ids=range(len(ODD)))
async def test_odd_strings_get_results_or_an_empty_list(searcher, q):
    body = await searcher(q)
    assert isinstance(body["data"], list)
    assert body["pagination"]["total"] >= len(body["data"])


@pytest.mark.parametrize("q", ["", "   ", "x" * 101])
async def test_an_empty_or_over_long_query_is_400(make_client, dataset_services, q):
    client = await make_client(database_url=dataset_services.database_url,
                               redis_url=dataset_services.redis_url)
    pair = await register(client)
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    resp = await client.get(SEARCH, params={"q": q}, headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["details"]["field"] == "q"
    assert (await client.get(SEARCH, headers=headers)).status == 400


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=st.text(min_size=1, max_size=100).filter(str.strip))
async def test_any_string_is_answered(searcher, q):
    body = await searcher(q)
    assert isinstance(body["data"], list)
