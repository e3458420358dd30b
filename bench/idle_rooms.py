"""10,000 documents opened and left idle: does the server's memory come back? (issue 24)

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a fresh
data dir, pinned with everything it starts to CPU core 0, with
``MODI_ROOM_IDLE_SECONDS`` short (``--idle``); the clients (bench/faults.mjs, one Node
process) run on core 1. ``--docs`` documents spread over ``--accounts`` accounts get
``--updates`` stored single-edit updates each (pycrdt, bench/cold_load.py's
``make_updates``, written straight into ``doc_updates``).

Warm-up: ``--warmup-docs`` other documents are opened the same way and left to go idle,
so that what the server builds once (code paths, caches, pools) is in the baseline.
Baseline: the server's RSS once it stops moving. Then every document is opened by a
client that connects, syncs (checking it holds every entry) and closes, at most
``--concurrency`` at once; RSS is sampled every 200 ms meanwhile (peak). Then nothing
happens for ``--idle`` seconds plus ``--wait`` more, and RSS is read again (after).
The server logs each room that leaves memory (at DEBUG), and those lines are counted:
every opened room must have left. It exits 1 if a client failed, if a room stayed, or
if the RSS after is more than 10 % over the baseline.

``--env NAME=VALUE`` (repeatable) adds to the server's environment, to find out where
memory that does not come back is held (e.g. ``PYTHONMALLOC=malloc``,
``MALLOC_ARENA_MAX=1``, ``MALLOC_TRIM_THRESHOLD_=0``).

    .venv/bin/python bench/idle_rooms.py [--docs 10000] [--idle 5] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cold_load import store_histories  # noqa: E402
from common import (  # noqa: E402
    BENCH,
    ModiServer,
    add_modi_rev,
    keep_off_server_core,
    modi_source,
    node_ready,
    rss_kb,
    run_node,
)


async def store(dsn: str, keys: list[tuple[uuid.UUID, str]], updates: int) -> int:
    """Each document of ``keys``, with ``updates`` single-edit updates; the bytes stored."""
    from storage.database import create_pool
    from storage.update_log import UpdateLog

    pool = await create_pool(dsn, max_size=2)
    try:
        return await store_histories(UpdateLog(pool), keys, updates)
    finally:
        await pool.close()


class RssWatch:
    """The server's RSS every ``every`` seconds, in a thread, until stopped."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.series.append((time.monotonic() - self.t0, rss_kb(self.pid) or 0))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> int:
        return max((kb for _, kb in self.series), default=0)


def settled_rss(pid: int, at_least: float, limit: float = 120.0) -> tuple[int, list[int]]:
    """After ``at_least`` seconds, the RSS once three readings 1 s apart agree within
    1 % (at most ``limit`` seconds more); the readings are returned too."""
    time.sleep(at_least)
    readings: list[int] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        readings.append(rss_kb(pid) or 0)
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
        time.sleep(1.0)
    return int(statistics.median(readings[-3:])), readings


_CENSUS = ("import gc, collections, json; gc.unfreeze(); "
           "c = collections.Counter(type(o).__qualname__ for o in gc.get_objects()); "
           "open({path!r}, 'w').write(json.dumps(c)); gc.freeze()")


def in_server(pid: int, *calls: str) -> bool:
    """Run C calls in the server process with gdb (a diagnosis, off by default)."""
    cmd = ["gdb", "-p", str(pid), "-batch", "-nx"]
    for call in calls:
        cmd += ["-ex", f"call {call}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return out.returncode == 0


def run_python(pid: int, code: str) -> bool:
    """Run ``code`` in the server's interpreter, holding its GIL (gdb)."""
    escaped = code.replace("\\", "\\\\").replace('"', '\\"')
    return in_server(pid, "(int)PyGILState_Ensure()",
                     f'(int)PyRun_SimpleString("{escaped}")', "(void)PyGILState_Release($1)")


def census(pid: int, path: Path) -> dict[str, int]:
    """Objects the collector tracks in the server, by type."""
    if not run_python(pid, _CENSUS.format(path=str(path))):
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def diagnose(pid: int, data_dir: Path, before: dict[str, int]) -> dict:
    """Where the memory that did not come back is: Python objects still alive (a census
    against the baseline's), cyclic garbage (a full collection), or memory the C
    allocator holds freed (``malloc_trim``)."""
    found: dict = {}
    after = census(pid, data_dir / "census-after.json")
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    found["objects_grown"] = sorted(((k, v) for k, v in grown.items() if v),
                                    key=lambda kv: -abs(kv[1]))[:15]
    found["rss_kb"] = rss_kb(pid)
    # The server freezes what survives a young collection (modi_sync/collector.py):
    # a full collection must unfreeze first to see the cycles among those.
    run_python(pid, "import gc; gc.unfreeze(); gc.collect(); gc.freeze()")
    time.sleep(1.0)
    found["after_gc_collect_kb"] = rss_kb(pid)
    in_server(pid, "(int)malloc_trim(0)")
    time.sleep(1.0)
    found["after_malloc_trim_kb"] = rss_kb(pid)
    return found


def left_memory(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count("left memory")
    except OSError:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--updates", type=int, default=20, help="stored updates per document")
    parser.add_argument("--warmup-docs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--idle", type=float, default=5.0, help="MODI_ROOM_IDLE_SECONDS")
    parser.add_argument("--wait", type=float, default=10.0,
                        help="seconds past the idle timeout before RSS is read")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--drop", action="store_true",
                        help="the clients drop their TCP connection instead of closing")
    parser.add_argument("--diagnose", action="store_true",
                        help="with gdb: a census of the server's objects at the baseline and "
                        "after, then a full collection and malloc_trim, with RSS after each")
    parser.add_argument("--quick", action="store_true", help="300 documents, 50 to warm up")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    add_modi_rev(parser)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.warmup_docs, args.accounts, args.idle, args.wait = 300, 50, 3, 2.0, 3.0
    missing = node_ready()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    keep_off_server_core()
    env = {"MODI_ROOM_IDLE_SECONDS": str(args.idle),
           "MODI_MAX_CONNECTIONS_PER_USER": "100000",
           "MODI_LOG_LEVEL": "DEBUG"}  # each room that leaves memory says so: counted
    env.update(dict(item.split("=", 1) for item in args.env))
    server = ModiServer.fresh(env, src=modi_source(args.modi_rev))
    figures: dict = {"env": env}
    results: dict = {}
    try:
        server.start()
        assert server.proc is not None
        pid = server.proc.pid
        accounts = [server.register() for _ in range(args.accounts)]
        tokens = [a["access_token"] for a in accounts]
        user = [uuid.UUID(a["user"]["id"]) for a in accounts]
        t0 = time.perf_counter()
        figures["stored_bytes"] = asyncio.run(store(server.dsn(), [
            (user[i % args.accounts], f"{prefix}-{i}")
            for prefix, count in (("warm", args.warmup_docs), ("idle", args.docs))
            for i in range(count)], args.updates))
        print(f"stored {args.warmup_docs + args.docs} documents in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

        def open_docs(prefix: str, count: int) -> dict:
            cfg = {"mode": "open", "urlTemplate": server.url_template(), "tokens": tokens,
                   "docs": count, "docPrefix": prefix, "keys": args.updates,
                   "concurrency": args.concurrency, "drop": args.drop}
            return run_node(BENCH / "faults.mjs", cfg, timeout=600)

        figures["start_rss_kb"] = rss_kb(pid)
        results["warmup"] = open_docs("warm", args.warmup_docs)
        figures["baseline_kb"], figures["baseline_readings"] = settled_rss(
            pid, args.idle + args.wait)
        figures["left_before"] = left_memory(server.log_path)
        if args.diagnose and shutil.which("gdb"):
            census_before = census(pid, server.data_dir / "census-before.json")
            figures["baseline_after_census_kb"] = rss_kb(pid)
        with RssWatch(pid) as watch:
            results["open"] = open_docs("idle", args.docs)
            figures["opened_rss_kb"] = rss_kb(pid)
        figures["peak_kb"] = watch.peak
        figures["after_kb"], figures["after_readings"] = settled_rss(pid, args.idle + args.wait)
        figures["left_after"] = left_memory(server.log_path)
        if args.diagnose and shutil.which("gdb"):
            figures["diagnosis"] = diagnose(pid, server.data_dir, census_before)
    finally:
        server.cleanup()

    failures = [f"{name}: {r.get('error')}" for name, r in results.items() if not r.get("ok")]
    left = figures.get("left_after", 0) - figures.get("left_before", 0)
    if left < args.docs:
        failures.append(f"only {left} of {args.docs} rooms left memory")
    base, after = figures.get("baseline_kb"), figures.get("after_kb")
    ratio = None if not base or after is None else after / base
    if ratio is None or ratio > 1.10:
        failures.append("RSS after the idle timeout is not within 10 % of the baseline")

    print(f"\nidle rooms: {args.docs} documents of {args.updates} stored updates over "
          f"{args.accounts} accounts, each opened by a client that syncs and closes "
          f"({args.concurrency} at once); MODI_ROOM_IDLE_SECONDS {args.idle:g}, RSS read "
          f"{args.wait:g} s after it; server side on core 0, clients on core 1."
          + (f" Server environment: {' '.join(args.env)}." if args.env else "") + "\n")
    mb = lambda kb: "–" if kb is None else f"{kb / 1024:.1f}"  # noqa: E731
    print("| server RSS | MB |")
    print("|---|---:|")
    print(f"| after start-up | {mb(figures.get('start_rss_kb'))} |")
    print(f"| baseline (after {args.warmup_docs} documents opened and idle) | {mb(base)} |")
    print(f"| peak while opening {args.docs} | {mb(figures.get('peak_kb'))} |")
    print(f"| just after the last closed | {mb(figures.get('opened_rss_kb'))} |")
    print(f"| after the idle timeout (+{args.wait:g} s) | {mb(after)} |")
    print(f"| after / baseline | {'–' if ratio is None else f'{ratio:.3f}'} |")
    diagnosis = figures.get("diagnosis")
    if diagnosis:
        print(f"| after a full gc.collect() in the server | "
              f"{mb(diagnosis.get('after_gc_collect_kb'))} |")
        print(f"| after malloc_trim(0) in the server | "
              f"{mb(diagnosis.get('after_malloc_trim_kb'))} |")
        print("\nobjects the collector tracks, after minus baseline: " + ", ".join(
            f"{name} {count:+d}" for name, count in diagnosis["objects_grown"]))
    opened = results.get("open", {})
    print(f"\nopened {args.docs - (opened.get('failed') or 0)} of {args.docs} in "
          f"{opened.get('seconds', 0):.1f} s; rooms that left memory meanwhile: {left}")
    print("verdict: " + ("back within 10 %" if not failures else "FAILED: " + "; ".join(failures)))
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "clients": results,
                                               "failures": failures}, indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
