"""Food search over 100,000 foods: latency on a cache miss and a hit, and throughput.

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a
fresh data dir, pinned with everything it starts to CPU core 0 (this script runs on
core 1). The server loads the shipped dataset (USDA SR28, 8,789 foods) by itself on
its first start; this script then adds generated variants of those foods (the same
food under an invented brand and a descriptor such as "family pack") up to
``--foods`` in all, straight into PostgreSQL, as a larger catalogue would hold them.

Three kinds of query, ``--queries`` of each, made from words of the dataset: full
words, prefixes as typed (the word's first 3 to 5 letters) and typos (a letter of a
word of 5 or more dropped, doubled or swapped with the next). Each is timed over
HTTP, one at a time: first on a cache miss (the foods version in Redis is bumped
before each, so no answer is cached), then again on a hit. Then ``--clients``
concurrent clients send the whole mix for ``--seconds``, on misses and on hits:
requests per second of the one instance. The SQL of the slowest miss of each kind is
shown with ``EXPLAIN ANALYZE``.

    .venv/bin/python bench/food_search.py [--foods 100000] [--queries 200] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import ModiServer, add_modi_rev, keep_off_server_core, modi_source  # noqa: E402

DESCRIPTORS = ["family pack", "organic", "value", "deluxe", "lite", "classic", "homestyle",
               "fresh", "frozen", "premium", "store brand", "snack size", "original"]
BRANDS = ["Acme Foods", "Northfield", "Green Valley", "Sunny Farms", "Blue Harbor",
          "Golden Mill", "Riverside", "Oak & Stone", "Maple Ridge", "Clearwater",
          "Harvest Moon", "Silver Spoon", "Red Barn", "Pine Hollow", "Bright Kitchen"]
WORDS = ["chicken", "broccoli", "cheese", "apple", "banana", "salmon", "yogurt", "bread",
         "potato", "tomato", "spinach", "almond", "turkey", "butter", "orange", "rice",
         "beef", "pasta", "cereal", "cookie", "carrot", "peanut", "chocolate", "lettuce",
         "oatmeal", "pork", "egg", "milk", "bean", "pepper", "strawberry", "tuna", "onion",
         "avocado", "cabbage", "mushroom", "sausage", "pizza", "cracker", "juice"]


def typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("drop", "double", "swap"))
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def queries(count: int, seed: int = 1) -> dict[str, list[str]]:
    rng = random.Random(seed)
    full = [rng.choice(WORDS) + ("" if rng.random() < 0.6 else " " + rng.choice(
        ["raw", "cooked", "frozen", "canned", "dried"])) for _ in range(count)]
    prefixes = [(w := rng.choice(WORDS))[:rng.randint(3, min(5, len(w)))]
                for _ in range(count)]
    typos = [typo(rng.choice([w for w in WORDS if len(w) >= 5]), rng) for _ in range(count)]
    return {"full words": full, "prefixes": prefixes, "typos": typos}


async def wait_for_dataset(dsn: str) -> None:
    """Until the server has loaded the shipped dataset (at most 5 minutes)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(600):  # another process loads it: polled
            if await conn.fetchval(
                    "SELECT count(*) FROM foods WHERE source = 'usda-sr28'") >= 8789:
                return
            await asyncio.sleep(0.5)
    finally:
        await conn.close()
    raise RuntimeError("the dataset did not load")


async def add_variants(dsn: str, total: int, seed: int = 2) -> int:
    """Variants of the dataset's foods until there are ``total`` foods."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    try:
        base = await conn.fetch("SELECT name, calories, protein, carbs, fat FROM foods "
                                "WHERE source = 'usda-sr28' ORDER BY source_id")
        have = await conn.fetchval("SELECT count(*) FROM foods")
        rows = []
        for n in range(total - have):
            food = base[n % len(base)]
            rows.append((f"{food['name']}, {rng.choice(DESCRIPTORS)}", rng.choice(BRANDS),
                         food["calories"], food["protein"], food["carbs"], food["fat"],
                         True, "bench", str(n)))
        await conn.copy_records_to_table(
            "foods", records=rows, columns=["name", "brand", "calories", "protein", "carbs",
                                            "fat", "verified", "source", "source_id"])
        await conn.execute("ANALYZE foods")
        return int(await conn.fetchval("SELECT count(*) FROM foods"))
    finally:
        await conn.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Bench:
    def __init__(self, server: ModiServer, token: str, redis_url: str) -> None:
        self.base = f"{server.http}/api/v1/foods/search"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.redis = redis.from_url(redis_url)

    async def one(self, session: aiohttp.ClientSession, q: str) -> float:
        t0 = time.perf_counter()
        async with session.get(self.base, params={"q": q}, headers=self.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{q!r}: {resp.status}")
        return (time.perf_counter() - t0) * 1000

    async def latencies(self, session: aiohttp.ClientSession,
                        qs: list[str]) -> tuple[list[float], list[float], str]:
        misses, hits = [], []
        slowest = (0.0, "")
        for q in qs:
            await self.redis.incr("foods:version")
            ms = await self.one(session, q)
            misses.append(ms)
            slowest = max(slowest, (ms, q))
            hits.append(await self.one(session, q))
        return misses, hits, slowest[1]

    async def throughput(self, session: aiohttp.ClientSession, qs: list[str], clients: int,
                         seconds: float, miss: bool) -> float:
        done = 0
        stop = time.monotonic() + seconds

        async def client(k: int) -> None:
            nonlocal done
            i = k
            while time.monotonic() < stop:
                q = qs[i % len(qs)]
                if miss:  # a query no answer is cached for: a word of its own
                    q = f"{q} {uuid.uuid4().hex[:6]}"[:100]
                await self.one(session, q)
                done += 1
                i += clients

        await asyncio.gather(*(client(k) for k in range(clients)))
        return done / seconds


async def explain(dsn: str, server: ModiServer, q: str) -> str:
    """EXPLAIN ANALYZE of the search statement the server runs for ``q``."""
    from modi_sync.foods import CORRECTIONS, query_words, search_query
    from storage import foods

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        store = foods.FoodStore(pool)
        typed = query_words(q)
        query = search_query(await store.query_words(typed, CORRECTIONS), typed)
        assert query is not None
        t0 = time.perf_counter()
        await store.query_words(typed, CORRECTIONS)
        words_ms = (time.perf_counter() - t0) * 1000
        rows = await pool.fetch("EXPLAIN (ANALYZE, BUFFERS) " + foods._SEARCH, query.match,
                                query.exact, None, 20, 0)
        return (f"q={q!r}: the words' statement {words_ms:.2f} ms; the search:\n"
                + "\n".join(r[0] for r in rows))
    finally:
        await pool.close()


async def run(args: argparse.Namespace, server: ModiServer) -> None:
    dsn = server.dsn()
    await wait_for_dataset(dsn)
    total = await add_variants(dsn, args.foods)
    token = server.register()["access_token"]
    redis_url = "unix://" + urllib.parse.quote(str(server.data_dir / "redis" / "redis.sock"))
    bench = Bench(server, token, redis_url)
    kinds = queries(args.queries)
    connector = aiohttp.TCPConnector(limit=args.clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        for q in WORDS[:5]:  # warm the server's statement caches
            await bench.one(session, q)
        print(f"\n{total:,} foods; {args.queries} queries of each kind, one at a time; "
              "server side on core 0.\n")
        print("| kind | miss p50, ms | miss p99, ms | hit p50, ms | hit p99, ms |")
        print("|---|---:|---:|---:|---:|")
        slowest = {}
        for kind, qs in kinds.items():
            misses, hits, slowest[kind] = await bench.latencies(session, qs)
            print(f"| {kind} | {percentile(misses, 50):.2f} | {percentile(misses, 99):.2f} | "
                  f"{percentile(hits, 50):.2f} | {percentile(hits, 99):.2f} |")
        mix = [q for qs in kinds.values() for q in qs]
        random.Random(3).shuffle(mix)
        for miss in (True, False):
            rate = await bench.throughput(session, mix, args.clients, args.seconds, miss)
            print(f"\n{args.clients} concurrent clients, {'misses' if miss else 'hits'}: "
                  f"{rate:,.0f} requests/s")
    await bench.redis.aclose()
    for kind, q in slowest.items():
        print(f"\nslowest {kind} miss, " + await explain(dsn, server, q))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--foods", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200, help="queries of each kind")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    add_modi_rev(parser)
    args = parser.parse_args()
    keep_off_server_core()
    server = ModiServer.fresh({"MODI_RATE_LIMIT_USER": "100000000/60"},
                              src=modi_source(args.modi_rev))
    try:
        server.start()
        asyncio.run(run(args, server))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
