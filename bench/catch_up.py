"""A catch-up after a gap on the bus, with 2,000 rooms in memory (issue 25).

Starts ``modi-sync serve`` on its embedded PostgreSQL and Redis (pinned to core 0, as
every bench here), stores ``--docs`` documents of ``--updates`` single-edit updates
each (through the served revision's own storage code), opens each with a client that
syncs and closes (bench/faults.mjs, core 1); with ``MODI_ROOM_IDLE_SECONDS`` long, the
rooms stay in memory. Then it plays another instance on the Redis channel: a message
numbered 1, then one numbered 3 (number 2 "lost"), which makes the server catch up.

Figures, from the moment the message numbered 3 is published: the wall time until the
server process and its PostgreSQL backends have used no CPU for 0.5 s (so the same
measure holds for revisions that do not log the end of a catch-up), and the CPU
seconds they used meanwhile; with a revision that logs "caught up after a gap", the
time to that line too.

    .venv/bin/python bench/catch_up.py [--docs 2000] [--modi-rev main|HEAD|worktree]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cold_load import store_histories  # noqa: E402
from common import (  # noqa: E402
    BENCH,
    ModiServer,
    add_modi_rev,
    keep_off_server_core,
    modi_source,
    node_ready,
    run_node,
)

_TICKS = os.sysconf("SC_CLK_TCK")


async def store(src: Path, dsn: str, keys: list[tuple[uuid.UUID, str]], updates: int) -> None:
    """Each document with ``updates`` stored updates, by the served revision's code."""
    sys.path.insert(0, str(src))  # its storage package, whatever its schema
    from storage.database import create_pool
    from storage.update_log import UpdateLog

    pool = await create_pool(dsn, max_size=2)
    try:
        await store_histories(UpdateLog(pool), keys, updates)
    finally:
        await pool.close()


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def server_cpu(server: ModiServer) -> float:
    """CPU seconds of the server process and of its PostgreSQL's backends."""
    assert server.proc is not None
    total = _cpu(server.proc.pid)
    pm = server.data_dir / "pg" / "postmaster.pid"
    postmaster = int(pm.read_text().splitlines()[0])
    return total + _cpu(postmaster) + sum(_cpu(p) for p in _children(postmaster))


async def gap(redis_url: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    sender = uuid.uuid4().bytes
    try:
        for number in (1, 3):  # header only: sender, number, sent at (storage/doc_events.py)
            await redis.publish(b"modi:docs", struct.pack(">16sQd", sender, number, time.time()))
    finally:
        await redis.aclose()


def redis_url(server: ModiServer) -> str:
    """The embedded Redis listens on a unix socket only (storage/embedded.py)."""
    return f"unix://{server.data_dir / 'redis' / 'redis.sock'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=100)
    add_modi_rev(parser)
    args = parser.parse_args()
    missing = node_ready()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    keep_off_server_core()
    src = modi_source(args.modi_rev)
    env = {"MODI_ROOM_IDLE_SECONDS": "3600", "MODI_MAX_CONNECTIONS_PER_USER": "100000",
           "MODI_AUTO_COMPACT_UPDATES": "100000", "MODI_LOG_LEVEL": "INFO"}
    server = ModiServer.fresh(env, src=src)
    try:
        server.start()
        accounts = [server.register() for _ in range(args.accounts)]
        users = [uuid.UUID(a["user"]["id"]) for a in accounts]
        asyncio.run(store(src, server.dsn(), [
            (users[i % args.accounts], f"doc-{i}") for i in range(args.docs)], args.updates))
        opened = run_node(BENCH / "faults.mjs", {
            "mode": "open", "urlTemplate": server.url_template(),
            "tokens": [a["access_token"] for a in accounts], "docs": args.docs,
            "docPrefix": "doc", "keys": args.updates, "concurrency": args.concurrency},
            timeout=600)
        if not opened.get("ok"):
            print(f"opening failed: {opened.get('error')}", file=sys.stderr)
            return 1
        time.sleep(3.0)  # the opening's work settles
        log_before = server.log_path.read_text(errors="replace")
        cpu0, t0 = server_cpu(server), time.monotonic()
        asyncio.run(gap(redis_url(server)))
        quiet_since, last, logged = None, cpu0, None
        while time.monotonic() - t0 < 300:
            time.sleep(0.05)
            now = server_cpu(server)
            if logged is None and "caught up after a gap" in \
                    server.log_path.read_text(errors="replace")[len(log_before):]:
                logged = time.monotonic() - t0
            if now > last:
                quiet_since, last = None, now
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 0.5:
                break
        busy = (quiet_since or time.monotonic()) - t0
        print(f"catch-up with {args.docs} rooms in memory ({args.updates} stored updates "
              f"each), revision {args.modi_rev}: busy {busy:.3f} s, CPU {last - cpu0:.2f} s"
              + (f", log says caught up at {logged:.3f} s" if logged is not None else ""))
    finally:
        server.cleanup(keep_log=Path("/tmp/catch_up_server.log"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
