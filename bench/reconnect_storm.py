"""A reconnect storm: every client of a restarted server reconnects at once (issue 24).

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a fresh
data dir, pinned with everything it starts to CPU core 0; the clients (bench/faults.mjs,
one Node process holding every client, each a real ``Y.Doc`` speaking the y-websocket
protocol) run on core 1. ``--docs`` documents, one account each, get ``--history``
stored updates each (single-edit updates made with pycrdt, bench/cold_load.py's
``make_updates``, written straight into ``doc_updates``), and ``--clients`` clients per
document sync them and stay connected.

Then the server is stopped (SIGTERM: every socket closed with 1001) and started again
on the same port, ``--extra`` more updates per document are stored while no client is
connected, and every client reconnects at the same moment, with no stagger (a client
whose attempt fails tries again after about 250 ms, at most 20 times). Every client
must end up holding its document exactly as stored: the number of entries and the
state vector, compared with what pycrdt computed from the same updates.

It reports the time from the go to the last client synced, per-client p50/p99, retries,
and the restarted server's peak RSS (VmHWM, reset at the go through ``clear_refs`` so
that its start-up's own peak does not count; and sampled every 100 ms) and that of its
side (PSS of the server, PostgreSQL and Redis). It exits 1 if any client did not sync
or holds another state.

    .venv/bin/python bench/reconnect_storm.py [--docs 200] [--clients 10] [--history 300]
                                              [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cold_load import make_updates  # noqa: E402
from common import (  # noqa: E402
    BENCH,
    GroupMonitor,
    ModiServer,
    add_modi_rev,
    hwm_kb,
    keep_off_server_core,
    modi_source,
    node_ready,
    reset_hwm,
    rss_kb,
    run_node,
)

PREFIX = "storm"


def expected(updates: list[bytes]) -> dict:
    """What a client holding ``updates`` has: entries in ``workouts``, state vector."""
    from pycrdt import Doc, Map

    doc = Doc()
    with doc.transaction():
        for update in updates:
            doc.apply_update(update)
    return {"keys": len(doc.get("workouts", type=Map)),
            "sv": base64.b64encode(doc.get_state()).decode()}


async def store(dsn: str, keys: list[tuple[uuid.UUID, str]], rows: list[list[bytes]]) -> int:
    """Append ``rows[i]`` to document ``keys[i]`` (made if new); the bytes stored."""
    from storage.database import create_pool
    from storage.update_log import UpdateLog

    pool = await create_pool(dsn, max_size=2)
    try:
        log = UpdateLog(pool)
        ids = await log.create_documents(keys)
        doc_ids = [doc_id for doc_id, updates in zip(ids, rows, strict=True)
                   for _ in updates]
        flat = [u for updates in rows for u in updates]
        for start in range(0, len(flat), 5000):
            await log.append_many(doc_ids[start:start + 5000], flat[start:start + 5000])
        return sum(len(u) for u in flat)
    finally:
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10, help="clients per document")
    parser.add_argument("--history", type=int, default=300, help="stored updates per document")
    parser.add_argument("--extra", type=int, default=20,
                        help="updates per document stored while the clients are away")
    parser.add_argument("--quick", action="store_true", help="10 documents x 5 clients, 30 updates")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    add_modi_rev(parser)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.clients, args.history, args.extra = 10, 5, 30, 5
    missing = node_ready()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    keep_off_server_core()

    t0 = time.perf_counter()
    updates = [make_updates(args.history + args.extra, seed=d) for d in range(args.docs)]
    before = [expected(u[:args.history]) for u in updates]
    after = [expected(u) for u in updates]
    print(f"made {args.docs} x {args.history + args.extra} updates in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    # Auto-compaction off: the documents keep their history as rows, as written.
    server = ModiServer.fresh({"MODI_AUTO_COMPACT_UPDATES": "100000000",
                               "MODI_AUTO_COMPACT_BYTES": str(1 << 40)},
                              src=modi_source(args.modi_rev))
    figures: dict = {}
    try:
        server.start()
        accounts = [server.register() for _ in range(args.docs)]
        keys = [(uuid.UUID(a["user"]["id"]), f"{PREFIX}-{d}") for d, a in enumerate(accounts)]
        figures["stored_bytes"] = asyncio.run(
            store(server.dsn(), keys, [u[:args.history] for u in updates]))
        monitor: list[GroupMonitor] = []

        def on_event(msg: dict, send) -> None:
            if msg["event"] == "connected":
                if msg["failed"] or msg["mismatched"]:
                    return  # the clients end by themselves and say why
                port = server.port
                t = time.perf_counter()
                server.stop()
                server.start(port=port)
                figures["restart_s"] = time.perf_counter() - t
                asyncio.run(store(server.dsn(), keys, [u[args.history:] for u in updates]))
                assert server.proc is not None
                time.sleep(1.0)  # let the new process settle before its RSS is read
                figures["rss_before_kb"] = rss_kb(server.proc.pid)
                figures["hwm_reset"] = reset_hwm(server.proc.pid)
                monitor.append(GroupMonitor(server.proc.pid, server.helper_pids(),
                                            interval=0.1, memory_every=1).start())
                send("go")
            elif msg["event"] == "synced" and monitor:
                figures.update(monitor[0].stop())
                assert server.proc is not None
                figures["hwm_kb"] = hwm_kb(server.proc.pid)

        cfg = {"mode": "storm", "urlTemplate": server.url_template(),
               "tokens": [a["access_token"] for a in accounts], "docs": args.docs,
               "clientsPerDoc": args.clients, "docPrefix": PREFIX, "before": before,
               "after": after}
        result = run_node(BENCH / "faults.mjs", cfg, on_event, timeout=900)
    finally:
        server.cleanup()

    n = args.docs * args.clients
    print(f"\nreconnect storm: {args.docs} documents of {args.history} stored updates "
          f"({figures.get('stored_bytes', 0) / args.docs / 1024:.0f} kB each), {args.clients} "
          f"clients each ({n} sockets); server restarted, {args.extra} updates per document "
          "stored meanwhile, every client reconnects at once; server side on core 0, "
          "clients on core 1.\n")
    rows = [
        ("clients synced, with the stored state", f"{n - (result.get('failed') or 0) - (result.get('mismatched') or 0)} of {n}"),  # noqa: E501
        ("time from the go to the last client synced, s", result.get("all_synced_s"), 2),
        ("per client, socket created to synced, p50 ms", result.get("sync_p50_ms"), 0),
        ("per client, p99 ms", result.get("sync_p99_ms"), 0),
        ("per client, max ms", result.get("sync_max_ms"), 0),
        ("connection attempts retried", result.get("retries")),
        ("server restart (stop, start, listening), s", figures.get("restart_s"), 1),
        ("server RSS before the storm, MB", _mb(figures.get("rss_before_kb")), 1),
        ("server peak RSS (VmHWM since the go), MB" if figures.get("hwm_reset") else
         "server peak RSS (VmHWM, start-up included), MB", _mb(figures.get("hwm_kb")), 1),
        ("server peak RSS, sampled every 100 ms, MB", _mb(figures.get("server_peak_rss_kb")), 1),
        ("server side peak PSS (+ PostgreSQL, Redis), MB", _mb(figures.get("side_peak_pss_kb")), 1),  # noqa: E501
        ("server CPU % of a core during the storm", figures.get("server_cpu_pct"), 0),
        ("server side CPU % during the storm", figures.get("side_cpu_pct"), 0),
        ("client CPU % during the storm", result.get("client_cpu_pct"), 0),
    ]
    print("| reconnect storm | |")
    print("|---|---:|")
    for row in rows:
        label, value = row[0], row[1]
        if value is None:
            cell = "–"
        elif isinstance(value, str):
            cell = value
        else:
            cell = f"{value:,.{row[2] if len(row) > 2 else 0}f}"
        print(f"| {label} | {cell} |")
    ok = bool(result.get("ok"))
    print("\nverdict: " + ("every client synced" if ok else f"FAILED: {result.get('error')}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "clients": result}, indent=2))
    return 0 if ok else 1


def _mb(kb: int | None) -> float | None:
    return None if kb is None else kb / 1024


if __name__ == "__main__":
    sys.exit(main())
