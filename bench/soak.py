"""A soak: W1 rate for a long time, with automatic compaction firing (issue 24).

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a fresh
data dir, pinned with everything it starts to CPU core 0; the clients (bench/faults.mjs,
one Node process) run on core 1. ``--docs`` documents x ``--clients`` clients each (one
account per document, its devices) send ``--rate`` W1 edits a second each for
``--minutes``, with automatic compaction set to fire (``--compact-updates`` stored rows,
at most once per ``--compact-interval`` seconds per document).

Every ``--sample-seconds`` it records the server process's RSS and open file descriptors
(/proc), and each document's stored rows and bytes (``doc_updates``, read from the
database), with the compactions the server logged so far and the delivery latency of
the clients over the last interval. At the end, every edit must have reached every
other client of its document, no client may have been closed, and a fresh client per
document must hold each writer's last edit.

Flat means, between the first and the last samples after a warm-up (medians of three
samples each): open file descriptors grow by at most 5; the largest row count of a
document in the last third is at most 1.5x (+20) that of the first third, and
compaction fired; RSS grows by at most 10 % (10 MB at least) more than the documents
themselves grew. A W1 document grows by itself: every edit overwrites one of its
writer's 16 keys and leaves a tombstone, in the stored state and in the room's ``Doc``
alike. So the script measures what the documents need at both ends (their stored
state loaded into pycrdt ``Doc``s in a separate process, RSS after minus before) and
takes that out of the server's growth before judging. It exits 1 when a check fails.

    .venv/bin/python bench/soak.py [--minutes 30] [--quick] [--json FILE]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import idle_rooms  # noqa: E402
from common import (  # noqa: E402
    BENCH,
    CLIENT_CORE,
    ModiServer,
    _python,
    add_modi_rev,
    keep_off_server_core,
    modi_source,
    node_ready,
    open_fds,
    pinned,
    rss_kb,
    run_node,
)

PREFIX = "soak"
IDLE_SECONDS = 5.0
_ROWS = """SELECT d.name, count(u.seq), coalesce(sum(octet_length(u.data)), 0)
             FROM documents d LEFT JOIN doc_updates u ON u.doc_id = d.id
            WHERE d.name LIKE $1 GROUP BY d.name"""


async def _stored(dsn: str) -> dict[str, tuple[int, int]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(_ROWS, f"{PREFIX}-%")
    finally:
        await conn.close()
    return {name: (count, size) for name, count, size in rows}


def stored(dsn: str) -> dict[str, tuple[int, int]]:
    """(rows, bytes) stored per document."""
    return asyncio.run(_stored(dsn))


async def _docs_memory(dsn: str) -> dict:
    import asyncpg
    from pycrdt import Doc

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT d.name, u.data FROM documents d JOIN doc_updates u ON u.doc_id = d.id
                WHERE d.name LIKE $1 ORDER BY d.name, u.seq""", f"{PREFIX}-%")
    finally:
        await conn.close()
    by_doc: dict[str, list[bytes]] = {}
    for name, data in rows:
        by_doc.setdefault(name, []).append(data)
    del rows
    before = rss_kb_self()
    docs = []
    for updates in by_doc.values():
        doc = Doc()
        with doc.transaction():
            for update in updates:
                doc.apply_update(update)
        docs.append(doc)
    return {"docs": len(docs), "kb": rss_kb_self() - before}


def rss_kb_self() -> int:
    import os

    return rss_kb(os.getpid()) or 0


def docs_memory_kb(dsn: str) -> int:
    """What the documents' stored state takes as pycrdt ``Doc``s, in a fresh process
    (off the server core), so that this process's own heap does not blur it."""
    out = subprocess.run(pinned([_python(), __file__, "--measure-docs", dsn], CLIENT_CORE),
                         capture_output=True, text=True, timeout=600, cwd=BENCH)
    if out.returncode != 0:
        raise RuntimeError(f"measuring the documents failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["kb"]


class Sampler:
    """Every ``every`` seconds: the server's RSS and fds, rows and bytes per document,
    the compactions it logged; the documents' own memory at the first sample after
    ``warmup`` seconds and at the end."""

    def __init__(self, server: ModiServer, every: float, warmup: float,
                 census: bool = False) -> None:
        assert server.proc is not None
        self.server = server
        self.pid = server.proc.pid
        self.dsn = server.dsn()
        self.every = every
        self.warmup = warmup
        self.samples: list[dict] = []
        self.ticks: list[dict] = []
        self.docs_kb_first: int | None = None
        self.docs_kb_last: int | None = None
        self.take_census = census
        self.census_first: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = 0.0

    def compactions(self) -> int:
        try:
            return self.server.log_path.read_text(errors="replace").count(" compacted ")
        except OSError:
            return 0

    def sample(self) -> dict:
        per_doc = stored(self.dsn)
        rows = [r for r, _ in per_doc.values()] or [0]
        size = [b for _, b in per_doc.values()] or [0]
        tick = self.ticks[-1] if self.ticks else {}
        entry = {"t_s": time.monotonic() - self.t0, "rss_kb": rss_kb(self.pid) or 0,
                 "fds": open_fds(self.pid) or 0, "docs": len(per_doc),
                 "rows_mean": statistics.fmean(rows), "rows_max": max(rows),
                 "bytes_mean": statistics.fmean(size), "compactions": self.compactions(),
                 "p50_ms": tick.get("p50_ms"), "p99_ms": tick.get("p99_ms")}
        self.samples.append(entry)
        print("  " + json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                 for k, v in entry.items()}), file=sys.stderr, flush=True)
        return entry

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                entry = self.sample()
                if self.docs_kb_first is None and entry["t_s"] >= self.warmup:
                    self.docs_kb_first = docs_memory_kb(self.dsn)
                    entry["docs_kb"] = self.docs_kb_first
                    if self.take_census:
                        self.census_first = census(self.pid, self.server.data_dir / "c1.json")
            except Exception as exc:  # noqa: BLE001 - a failed sample is reported, not fatal
                print(f"  sample failed: {exc}", file=sys.stderr, flush=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.every + 120)
        entry = self.sample()
        self.docs_kb_last = docs_memory_kb(self.dsn)
        entry["docs_kb"] = self.docs_kb_last


def diagnose(server: ModiServer, census_first: dict[str, int]) -> dict:
    """idle_rooms.py's diagnosis at the end of the load (the clients gone, the rooms
    still in memory), then malloc_trim again once the rooms left memory."""
    assert server.proc is not None
    found = idle_rooms.diagnose(server.proc.pid, server.data_dir, census_first)
    time.sleep(IDLE_SECONDS + 10)
    found["rooms_gone_kb"] = rss_kb(server.proc.pid)
    idle_rooms.in_server(server.proc.pid, "(int)malloc_trim(0)")
    time.sleep(1.0)
    found["rooms_gone_trimmed_kb"] = rss_kb(server.proc.pid)
    idle_rooms.run_python(server.proc.pid, "import gc; gc.unfreeze(); gc.collect(); gc.freeze()")
    idle_rooms.in_server(server.proc.pid, "(int)malloc_trim(0)")
    time.sleep(1.0)
    found["rooms_gone_collected_kb"] = rss_kb(server.proc.pid)
    return found


def census(pid: int, path: Path) -> dict[str, int]:
    return idle_rooms.census(pid, path)


def _mid3(values: list[float]) -> float:
    return statistics.median(values[:3]) if values else 0.0


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def judge(samples: list[dict], warmup: float, docs_first: int | None,
          docs_last: int | None) -> tuple[list[dict], list[str]]:
    """The summary rows (first, last, slope) and the checks that failed."""
    window = [s for s in samples if s["t_s"] >= warmup]
    failures: list[str] = []
    if len(window) < 4:
        return [], [f"only {len(window)} samples after the warm-up: run longer"]
    head, tail = window[:3], window[-3:]
    summary = []
    for key, label, scale in (("rss_kb", "server RSS, MB", 1024), ("fds", "open fds", 1),
                              ("rows_mean", "stored rows per document, mean", 1),
                              ("rows_max", "stored rows per document, largest", 1),
                              ("bytes_mean", "stored kB per document, mean", 1024)):
        first = _mid3([s[key] for s in head]) / scale
        last = _mid3([s[key] for s in tail]) / scale
        slope = slope_per_min([(s["t_s"], s[key] / scale) for s in window])
        summary.append({"figure": label, "first": first, "last": last, "slope_per_min": slope})
    by = {row["figure"]: row for row in summary}
    fds = by["open fds"]
    if fds["last"] > fds["first"] + 5:
        failures.append(f"open fds grew from {fds['first']:.0f} to {fds['last']:.0f}")
    third = max(1, len(window) // 3)
    rows_early = max(s["rows_max"] for s in window[:third])
    rows_late = max(s["rows_max"] for s in window[-third:])
    if rows_late > 1.5 * rows_early + 20:
        failures.append(f"stored rows per document grew: largest {rows_early} early, "
                        f"{rows_late} late")
    if samples[-1]["compactions"] == 0:
        failures.append("automatic compaction never fired: lower --compact-updates")
    rss = by["server RSS, MB"]
    docs_growth = None if docs_first is None or docs_last is None \
        else (docs_last - docs_first) / 1024
    summary.append({"figure": "documents as pycrdt Docs, MB",
                    "first": None if docs_first is None else docs_first / 1024,
                    "last": None if docs_last is None else docs_last / 1024,
                    "slope_per_min": None})
    unexplained = rss["last"] - rss["first"] - (docs_growth or 0.0)
    summary.append({"figure": "server RSS growth less the documents' growth, MB",
                    "first": None, "last": unexplained, "slope_per_min": None})
    if docs_growth is None:
        failures.append("the documents' memory could not be measured")
    elif unexplained > max(0.10 * rss["first"], 10.0):
        failures.append(f"server RSS grew {rss['last'] - rss['first']:.1f} MB, "
                        f"{unexplained:.1f} MB more than the documents did")
    return summary, failures


def _cell(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def report(samples: list[dict], summary: list[dict], result: dict, args: argparse.Namespace,
           failures: list[str]) -> None:
    print(f"\nsoak: {args.docs} documents x {args.clients} clients, {args.rate} edits/s each, "
          f"{args.minutes:g} min; auto-compaction at {args.compact_updates} rows, at most "
          f"every {args.compact_interval:g} s; server side on core 0, clients on core 1.\n")
    print("| t, s | server RSS, MB | open fds | rows/doc mean | rows/doc max | "
          "stored kB/doc | compactions | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        print(f"| {s['t_s']:.0f} | {s['rss_kb'] / 1024:.1f} | {s['fds']} | "
              f"{s['rows_mean']:.1f} | {s['rows_max']} | {s['bytes_mean'] / 1024:.1f} | "
              f"{s['compactions']} | {_cell(s['p50_ms'])} | {_cell(s['p99_ms'])} |")
    print("\n| after the warm-up | first | last | slope per minute |")
    print("|---|---:|---:|---:|")
    for row in summary:
        print(f"| {row['figure']} | {_cell(row['first'])} | {_cell(row['last'])} | "
              f"{_cell(row['slope_per_min'], 2)} |")
    print(f"\nedits sent {result.get('edits_sent')}, deliveries {result.get('deliveries')} of "
          f"{result.get('deliveries_expected')}, clients closed {result.get('closed')}, "
          f"latency p50 {_cell(result.get('latency_p50_ms'))} ms, p99 "
          f"{_cell(result.get('latency_p99_ms'))} ms, converged {result.get('converged')}")
    print("verdict: " + ("flat" if not failures else "FAILED: " + "; ".join(failures)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-seconds", type=float, default=30.0)
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="clients per document")
    parser.add_argument("--rate", type=float, default=5.0, help="edits/s per client")
    parser.add_argument("--compact-updates", type=int, default=200,
                        help="MODI_AUTO_COMPACT_UPDATES")
    parser.add_argument("--compact-interval", type=float, default=30.0,
                        help="MODI_AUTO_COMPACT_INTERVAL, seconds")
    parser.add_argument("--diagnose", action="store_true",
                        help="with gdb (idle_rooms.py's): a census of the server's objects "
                        "after the warm-up and at the end, then malloc_trim with the rooms "
                        "in memory and again once they left, with RSS after each")
    parser.add_argument("--quick", action="store_true",
                        help="30 s, 5 documents x 2 clients, samples every 3 s")
    parser.add_argument("--json", metavar="FILE", help="also write every figure here")
    add_modi_rev(parser)
    parser.add_argument("--measure-docs", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_docs:
        print(json.dumps(asyncio.run(_docs_memory(args.measure_docs))))
        return 0
    if args.quick:
        args.minutes, args.sample_seconds, args.docs, args.clients = 0.5, 3.0, 5, 2
        args.compact_updates, args.compact_interval = 20, 3.0
    missing = node_ready()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    keep_off_server_core()
    duration = args.minutes * 60
    warmup = max(min(60.0, duration / 5), duration / 10)

    server = ModiServer.fresh({
        "MODI_AUTO_COMPACT_UPDATES": str(args.compact_updates),
        "MODI_AUTO_COMPACT_INTERVAL": str(args.compact_interval),
        "MODI_LOG_LEVEL": "INFO",  # each automatic compaction logs a line: counted
        # The fresh clients that check convergence at the end use the tokens issued at
        # the start; the clients stay connected, so the rooms never go idle meanwhile.
        "MODI_ACCESS_TOKEN_TTL": str(int(duration) + 900),
        "MODI_ROOM_IDLE_SECONDS": str(IDLE_SECONDS),
    }, src=modi_source(args.modi_rev))
    result: dict = {}
    diagnosis: dict = {}
    try:
        server.start()
        tokens = [server.register()["access_token"] for _ in range(args.docs)]
        sampler = Sampler(server, args.sample_seconds, warmup,
                          census=args.diagnose and shutil.which("gdb") is not None)

        def on_event(msg: dict, send) -> None:
            if msg["event"] == "load-start":
                sampler.start()
            elif msg["event"] == "tick":
                sampler.ticks.append(msg)
            elif msg["event"] == "load-end":
                sampler.stop()

        cfg = {"mode": "soak", "urlTemplate": server.url_template(), "tokens": tokens,
               "docs": args.docs, "clientsPerDoc": args.clients, "rate": args.rate,
               "durationMs": int(duration * 1000), "tickMs": int(args.sample_seconds * 1000),
               "docPrefix": PREFIX}
        # Access tokens live 15 minutes; the sockets opened with them stay open.
        result = run_node(BENCH / "faults.mjs", cfg, on_event, duration + 300)
        if sampler.t0 and not sampler.stopped:  # the clients ended early
            sampler.stop()
        summary, failures = judge(sampler.samples, warmup, sampler.docs_kb_first,
                                  sampler.docs_kb_last)
        if args.diagnose and shutil.which("gdb"):
            diagnosis = diagnose(server, sampler.census_first)
    finally:
        server.cleanup()
    if not result.get("ok"):
        failures.append(f"the clients: {result.get('error')}")
    report(sampler.samples, summary, result, args, failures)
    if diagnosis:
        mb = lambda kb: "–" if kb is None else f"{kb / 1024:.1f}"  # noqa: E731
        print("\n| diagnosis (gdb in the server) | RSS, MB |")
        print("|---|---:|")
        for key, label in (("rss_kb", "at the end, clients gone, rooms in memory"),
                           ("after_gc_collect_kb", "after a full collection (unfrozen)"),
                           ("after_malloc_trim_kb", "after malloc_trim(0)"),
                           ("rooms_gone_kb", "once the rooms left memory"),
                           ("rooms_gone_trimmed_kb", "then after malloc_trim(0)"),
                           ("rooms_gone_collected_kb",
                            "then after a full collection of the frozen objects and a trim")):
            print(f"| {label} | {mb(diagnosis.get(key))} |")
        print("\nobjects the collector tracks, end minus after the warm-up: " + ", ".join(
            f"{name} {count:+d}" for name, count in diagnosis["objects_grown"]))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"samples": sampler.samples, "summary": summary, "clients": result,
             "failures": failures, "warmup_s": warmup, "diagnosis": diagnosis}, indent=2))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
