"""The daily summary of a document of 5,000 food-log entries: time per request.

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a
fresh data dir, pinned with everything it starts to CPU core 0 (this script runs on
core 1). Registers an account, adds ``--foods`` foods (50) to the ``foods`` table, and
stores the account's ``default`` document straight into PostgreSQL through the storage
package: ``--entries`` real single-entry Yjs updates made with pycrdt (one food log
each, as a phone writes them), spread over ``--days`` days (10), so a day holds 500.

Then, over one keep-alive connection, ``GET /api/v1/food-logs/daily-summary`` for one
day: the first request after a restart (the document loaded from its rows: ``cold``),
then ``--requests`` more (its room in memory: ``warm``). Reports p50 and p99 of the
warm requests and the median of the cold ones, over ``--reps`` restarts. During the warm
requests a second connection asks ``GET /health`` back to back: its slowest answers
show how long a summary holds the event loop, which every other client of the
instance waits on. With ``--stalls`` the server also times how long its event loop is
held and its garbage collections (bench/loop_stalls), and the report names the longest
of each during the warm requests, with where it happened.

    .venv/bin/python bench/daily_summary.py [--entries 5000] [--requests 200] [--reps 3]
        [--stalls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    BENCH,
    ModiServer,
    add_modi_rev,
    keep_off_server_core,
    median,
    modi_source,
)

FIRST_DAY = date(2030, 3, 1)
MEALS = ("breakfast", "lunch", "dinner", "snack")


def make_updates(entries: int, food_ids: list[str], days: int) -> list[bytes]:
    """One Yjs update per food-log entry, each on top of the ones before."""
    from pycrdt import Doc, Map

    doc: Doc = Doc()
    logs = doc.get("food_logs", type=Map)
    updates = []
    for n in range(entries):
        before = doc.get_state()
        logs[str(uuid.uuid4())] = Map({
            "food_id": food_ids[n % len(food_ids)], "quantity_g": 50.0 + n % 200,
            "meal_type": MEALS[n % len(MEALS)],
            "date": (FIRST_DAY + timedelta(days=n % days)).isoformat()})
        updates.append(doc.get_update(before))
    return updates


async def store(dsn: str, user_id: str, entries: int, foods: int, days: int) -> int:
    """The foods, then the document; its stored bytes."""
    from storage.database import create_pool
    from storage.update_log import UpdateLog

    pool = await create_pool(dsn, max_size=2)
    try:
        rows = await pool.fetch(
            "INSERT INTO foods (name, calories, protein, carbs, fat)"
            " SELECT 'bench food ' || g, 50 + g, g % 30, g % 70, g % 20"
            " FROM generate_series(1, $1) g RETURNING id", foods)
        updates = make_updates(entries, [str(r["id"]) for r in rows], days)
        log = UpdateLog(pool)
        doc_id, = await log.create_documents([(uuid.UUID(user_id), "default")])
        assert doc_id is not None
        await log.append_many([doc_id] * len(updates), updates)
        return sum(len(u) for u in updates)
    finally:
        await pool.close()


async def timed_requests(server: ModiServer, token: str, count: int,
                         ) -> tuple[float, list[float], list[float], tuple[float, float]]:
    """The first request's seconds, each of ``count`` more, those of the health checks
    answered meanwhile, and when (``time.time()``) the warm requests began and ended."""
    url = f"{server.http}/api/v1/food-logs/daily-summary?date={FIRST_DAY.isoformat()}"
    headers = {"Authorization": f"Bearer {token}"}
    times: list[float] = []
    health: list[float] = []
    done = asyncio.Event()
    async with aiohttp.ClientSession(headers=headers) as session, \
            aiohttp.ClientSession() as prober:
        probe = None
        for _ in range(count + 1):
            t0 = time.perf_counter()
            async with session.get(url) as resp:
                body = await resp.read()
            times.append(time.perf_counter() - t0)
            if resp.status != 200:
                raise RuntimeError(f"{resp.status}: {body[:300]!r}")
            if probe is None:  # from the first warm request on: the load is the loader's
                warm_from = time.time()
                probe = asyncio.create_task(_probe(prober, f"{server.http}/health", health,
                                                   done))
        done.set()
        warm_to = time.time()
        if probe is not None:
            await probe
    summary = json.loads(body)["data"]
    if summary["total"]["entries"] == 0 or summary["unknown_food_ids"]:
        raise RuntimeError(f"an unexpected summary: {summary}")
    return times[0], times[1:], health, (warm_from, warm_to)


async def _probe(session: aiohttp.ClientSession, url: str, times: list[float],
                 done: asyncio.Event) -> None:
    while not done.is_set():
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
        times.append(time.perf_counter() - t0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def longest_stalls(path: Path, windows: list[tuple[int, float, float]]) -> dict[str, dict]:
    """The longest ``loop`` and ``gc`` record of bench/loop_stalls in ``path`` that one of
    the (server pid, from, to) ``windows`` holds, by kind."""
    longest: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        held = any(pid == record["pid"] and start <= record["t"] <= end
                   for pid, start, end in windows)
        if held and record["ms"] > longest.get(record["kind"], {"ms": 0})["ms"]:
            longest[record["kind"]] = record
    return longest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=5000, help="food logs in the document")
    parser.add_argument("--foods", type=int, default=50, help="foods they name")
    parser.add_argument("--days", type=int, default=10, help="days they are spread over")
    parser.add_argument("--requests", type=int, default=200, help="warm requests per run")
    parser.add_argument("--reps", type=int, default=3, help="runs, server restarted before each")
    add_modi_rev(parser)
    parser.add_argument("--stalls", action="store_true",
                        help="time the server's event-loop holds and collections too")
    args = parser.parse_args()
    keep_off_server_core()

    env = {"MODI_POPULAR_INTERVAL": "0"}
    stalls = None
    if args.stalls:
        stalls = Path(tempfile.mkstemp(prefix="modi-stalls-", suffix=".jsonl")[1])
        env |= {"MODI_BENCH_STALLS": str(stalls), "PYTHONPATH": os.pathsep.join(
            filter(None, (str(BENCH / "loop_stalls"), os.environ.get("PYTHONPATH"))))}
    server = ModiServer.fresh(env, src=modi_source(args.modi_rev))
    cold: list[float] = []
    warm: list[float] = []
    health: list[float] = []
    windows: list[tuple[int, float, float]] = []
    try:
        server.start()
        account = server.register()
        stored = asyncio.run(store(server.dsn(), account["user"]["id"], args.entries,
                                   args.foods, args.days))
        for rep in range(args.reps):
            server.stop()
            server.start()
            token = server.login(account["user"]["email"])["access_token"]
            first, rest, probed, (warm_from, warm_to) = asyncio.run(
                timed_requests(server, token, args.requests))
            assert server.proc is not None
            windows.append((server.proc.pid, warm_from, warm_to))
            cold.append(first)
            warm.extend(rest)
            health.extend(probed)
            print(f"run {rep + 1}: cold {first * 1e3:.1f} ms, warm p50 "
                  f"{percentile(rest, 0.5) * 1e3:.2f} ms", file=sys.stderr)
    finally:
        server.cleanup()

    print(f"\nmodi-sync from {server.src}; one document of {args.entries:,} food logs "
          f"({stored / 1e6:.2f} MB in {args.entries:,} stored updates), "
          f"{args.entries // args.days:,} on the day asked; {args.reps} runs, server side on "
          "core 0.\n")
    print("| daily summary | ms |")
    print("|---|---:|")
    print(f"| cold (first after a restart), median | {(median(cold) or 0) * 1e3:.1f} |")
    print(f"| warm p50 ({len(warm)} requests) | {percentile(warm, 0.5) * 1e3:.2f} |")
    print(f"| warm p99 | {percentile(warm, 0.99) * 1e3:.2f} |")
    print(f"| `GET /health` meanwhile, p99 ({len(health)} requests) | "
          f"{percentile(health, 0.99) * 1e3:.2f} |")
    print(f"| `GET /health` meanwhile, slowest | {max(health) * 1e3:.2f} |")
    if stalls is not None:
        longest = longest_stalls(stalls, windows)
        stalls.unlink()
        for kind, what, over in (("loop", "hold of the event loop", "5"),
                                 ("gc", "garbage collection", "2")):
            record = longest.get(kind)
            print(f"| the server's longest {what} during the warm requests | "
                  + (f"{record['ms']:.1f} ({record['where']}) |" if record
                     else f"none over {over} |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
