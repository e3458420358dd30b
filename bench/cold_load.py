"""Cold and warm initial sync of a long update log, before and after compaction (issue 4).

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a
fresh data dir, pinned with everything it starts to CPU core 0 (the client runs on
core 1). Registers one account, then builds each document by inserting rows straight
into ``doc_updates`` with asyncpg: each row is the update of one pycrdt transaction
that sets one workout (``workouts[uuid] = {name, sets, reps, weight}``), so a
document is exactly ``--updates`` single-edit updates, as a client writing one edit
at a time leaves it.

Then it reports, as medians of ``--reps`` runs:

(a) the time a fresh y-websocket client (npm ``yjs`` + ``y-websocket``
    WebsocketProvider over ``ws``, bench/yclient.mjs) takes from creating its socket
    to its ``sync`` event with the whole document applied (every key checked):
    cold (server restarted before each run, so the room loads from PostgreSQL) and
    warm (a second fresh client while the room is in memory), before and after
    ``modi-sync compact --all``. Each client is a new Node process that first applies
    a similar document locally, off the clock, so Yjs' decoder is JIT-compiled as in a
    running app; one more warm client per run skips that, to show what it costs;
(b) the time ``modi-sync compact --all`` takes per document and per MB of stored
    updates, run while the server is up (as an operator would), on ``--docs``
    freshly built documents per run.

    .venv/bin/python bench/cold_load.py [--updates 10000] [--docs 8] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import (  # noqa: E402
    BENCH,
    CLIENT_CORE,
    ModiServer,
    add_modi_rev,
    median,
    modi_source,
    node_ready,
    pinned,
)


def make_updates(count: int, seed: int) -> list[bytes]:
    """``count`` single-edit updates of one pycrdt client, in order."""
    from pycrdt import Doc, Map

    doc = Doc(client_id=1000 + seed)
    workouts = doc.get("workouts", type=Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        with doc.transaction():
            workouts[str(uuid.uuid4())] = {"name": "bench press", "sets": 3, "reps": 8,
                                           "weight": 60 + (i % 40) / 2}
    return updates


async def store_histories(log: Any, keys: list[tuple[uuid.UUID, str]], updates: int) -> int:
    """Each (user_id, name) document of ``keys`` made, with ``updates`` single-edit
    updates stored, 500 documents a batch, through ``log`` (a storage UpdateLog); the
    bytes stored."""
    total = 0
    for start in range(0, len(keys), 500):
        ids = await log.create_documents(keys[start:start + 500])
        doc_ids, rows = [], []
        for n, doc_id in enumerate(ids):
            made = make_updates(updates, seed=start + n)
            doc_ids += [doc_id] * len(made)
            rows += made
        await log.append_many(doc_ids, rows)
        total += sum(len(r) for r in rows)
    return total


async def insert_documents(dsn: str, user_id: str, names: list[str], count: int) -> int:
    """Create each document and its ``count`` update rows; return the bytes inserted."""
    import asyncpg

    total = 0
    conn = await asyncpg.connect(dsn)
    try:
        for n, name in enumerate(names):
            updates = make_updates(count, seed=hash(name) % 100000 + n)
            total += sum(len(u) for u in updates)
            async with conn.transaction():
                doc_id = await conn.fetchval(
                    "INSERT INTO documents (user_id, name) VALUES ($1, $2) RETURNING id",
                    uuid.UUID(user_id), name)
                # Numbered per document, as the group commit numbers them.
                await conn.copy_records_to_table(
                    "doc_updates", columns=["user_id", "doc_id", "seq", "data"],
                    records=[(uuid.UUID(user_id), doc_id, seq, u)
                             for seq, u in enumerate(updates, 1)])
                await conn.execute("UPDATE documents SET last_seq = $1 WHERE id = $2",
                                   len(updates), doc_id)
    finally:
        await conn.close()
    return total


def sync_once(server: ModiServer, name: str, token: str, expect_keys: int | None,
              warmup: bool = True) -> dict:
    cmd = pinned(["node", str(BENCH / "yclient.mjs"), json.dumps({
        "url": f"ws://127.0.0.1:{server.port}/sync", "room": name, "token": token,
        "expectKeys": expect_keys, "timeoutMs": 60000, "warmup": warmup})], CLIENT_CORE)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"client printed nothing: {out.stderr[-2000:]}")
    result = json.loads(lines[-1])
    if not result.get("ok"):
        raise RuntimeError(f"client failed: {result.get('error')}")
    return result


def measure_sync(server: ModiServer, token: str, names: list[str], keys: int,
                 reps: int) -> dict[str, list[float]]:
    """Per run: restart the server, one cold client, then one warm client, same document.

    A third client, also warm, runs in a Node process whose JIT has not seen Yjs'
    decoder yet (what a freshly started script pays on top).
    """
    cold, warm, cold_open, warm_open, jit_cold = [], [], [], [], []
    for rep in range(reps):
        server.stop()
        server.start()
        name = names[rep % len(names)]
        first = sync_once(server, name, token, keys)
        second = sync_once(server, name, token, keys)
        jit_cold.append(sync_once(server, name, token, keys, warmup=False)["connect_to_synced_ms"])
        cold.append(first["connect_to_synced_ms"])
        cold_open.append(first["open_to_synced_ms"])
        warm.append(second["connect_to_synced_ms"])
        warm_open.append(second["open_to_synced_ms"])
    return {"cold": cold, "warm": warm, "cold_open": cold_open, "warm_open": warm_open,
            "warm_jit_cold": jit_cold}


_COMPACTED = re.compile(
    r"compacted (\d+) documents: (\d+) -> (\d+) updates, (\d+) -> (\d+) bytes, in ([\d.]+) s")


def compact(server: ModiServer) -> dict:
    wall, output = server.compact_all()
    match = _COMPACTED.search(output)
    if match is None:
        raise RuntimeError(f"unexpected compact output: {output[-2000:]}")
    docs, upd_before, upd_after, bytes_before, bytes_after, secs = match.groups()
    return {"docs": int(docs), "updates_before": int(upd_before),
            "updates_after": int(upd_after), "bytes_before": int(bytes_before),
            "bytes_after": int(bytes_after), "seconds": float(secs), "command_wall_s": wall}


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10_000, help="updates per document")
    parser.add_argument("--docs", type=int, default=8, help="documents per compaction run")
    parser.add_argument("--reps", type=int, default=3, help="runs per figure (medians)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    add_modi_rev(parser)
    args = parser.parse_args()
    missing = node_ready()
    if missing:
        print(f"cold_load: {missing}", file=sys.stderr)
        return 2

    server = ModiServer.fresh({"MODI_AUTO_COMPACT_UPDATES": "100000000",
                               "MODI_AUTO_COMPACT_BYTES": str(1 << 40)},
                              src=modi_source(args.modi_rev))
    raw: dict = {"updates_per_doc": args.updates, "docs_per_compaction": args.docs}
    try:
        server.start()
        account = server.register()
        user_id, token = account["user"]["id"], account["access_token"]
        sync_names = [f"cold-{i}" for i in range(args.reps)]
        t0 = time.perf_counter()
        size = asyncio.run(insert_documents(server.dsn(), user_id, sync_names, args.updates))
        print(f"built {len(sync_names)} documents of {args.updates} updates "
              f"({size / len(sync_names) / 1e6:.2f} MB each) in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
        raw["doc_bytes"] = size // len(sync_names)

        raw["before"] = measure_sync(server, token, sync_names, args.updates, args.reps)
        print(f"before compaction: {raw['before']}", file=sys.stderr)
        raw["compactions"] = []
        for run in range(args.reps):
            if run > 0:  # the first run compacts the timed documents too
                names = [f"compact-{run}-{i}" for i in range(args.docs)]
            else:
                names = [f"compact-0-{i}" for i in range(args.docs - len(sync_names))]
            asyncio.run(insert_documents(server.dsn(), user_id, names, args.updates))
            result = compact(server)
            print(f"compaction run {run + 1}: {result}", file=sys.stderr)
            raw["compactions"].append(result)
            if run == 0:
                raw["after"] = measure_sync(server, token, sync_names, args.updates, args.reps)
                print(f"after compaction: {raw['after']}", file=sys.stderr)
    finally:
        server.cleanup()

    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    before, after = raw["before"], raw["after"]
    comps = raw["compactions"]
    per_doc = median(1000 * c["seconds"] / c["docs"] for c in comps)
    per_mb = median(1000 * c["seconds"] / (c["bytes_before"] / 1e6) for c in comps)
    ratio = median(c["bytes_after"] / c["bytes_before"] for c in comps)
    print(f"\nmodi-sync from {server.src}.")
    print(f"A document of {args.updates:,} single-edit updates "
          f"({raw['doc_bytes'] / 1e6:.2f} MB stored); medians of {args.reps} runs; "
          f"server side on core 0, client on core 1.\n")
    print("| fresh y-websocket client, socket created -> synced "
          "| before compaction | after compaction |")
    print("|---|---:|---:|")
    print(f"| cold (server restarted, room loaded from PostgreSQL), ms | "
          f"{fmt(median(before['cold']))} | {fmt(median(after['cold']))} |")
    print(f"| warm (room in memory), ms | {fmt(median(before['warm']))} | "
          f"{fmt(median(after['warm']))} |")
    print(f"| cold, from socket open, ms | {fmt(median(before['cold_open']))} | "
          f"{fmt(median(after['cold_open']))} |")
    print(f"| warm, from socket open, ms | {fmt(median(before['warm_open']))} | "
          f"{fmt(median(after['warm_open']))} |")
    print(f"| warm, client process without JIT warm-up, ms | "
          f"{fmt(median(before['warm_jit_cold']))} | {fmt(median(after['warm_jit_cold']))} |")
    print()
    print(f"| `modi-sync compact --all` ({args.docs} documents per run) | median |")
    print("|---|---:|")
    print(f"| per document, ms | {fmt(per_doc)} |")
    print(f"| per MB of stored updates, ms | {fmt(per_mb)} |")
    print(f"| whole command (process start included), s | "
          f"{fmt(median(c['command_wall_s'] for c in comps), 2)} |")
    print(f"| stored bytes after / before | {fmt(ratio, 3)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
