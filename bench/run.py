"""The benchmark runner: modi-sync against other Yjs sync servers, on loopback (issue 5).

Each server is started on 127.0.0.1 pinned to CPU core 0 (modi-sync with the embedded
PostgreSQL and Redis it starts, which inherit the pinning), and the load generator
(bench/loadgen.mjs, one Node process) runs pinned to core 1. Workloads:

  W1 fan-out     50x4 closed loop, 1x50 closed loop, 50x4 at a fixed rate
  W2 initial     a document of 10,000 single-edit updates and one of ~2.8 MB sent as one
                 update: fresh client from socket creation to state applied, warm and cold
  W3 connections 2,000 and 5,000 sockets, each to its own document, full handshake

Every run ends by verifying convergence (W1: every client equals a fresh client synced
from the server, and holds each writer's last value; W2: the fresh client's state
vector and keys equal the builder's; W3: every socket completed its handshake and was
still open when counted). A run that fails it is reported as failed, not as fast.

The runs go round-robin: each round runs every server once, then the next round begins,
so a shared machine that speeds up or slows down during the half hour moves every
server's medians alike instead of favouring whichever server ran last.

    .venv/bin/python bench/run.py [--quick] [--workloads W1,W2,W3] [--servers LIST]
                                  [--reps 3] [--json FILE]

Nothing is installed here; if something is missing it says what to run
(``bash bench/setup.sh``). See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ANCHORS,
    BENCH,
    CLIENT_CORE,
    AnchorServer,
    GroupMonitor,
    ModiServer,
    add_modi_rev,
    anchors_ready,
    have_taskset,
    keep_off_server_core,
    log_errors,
    median,
    modi_source,
    node_ready,
    pinned,
    rss_kb,
)

Send = Callable[[str], None]  # a word to the load generator's stdin
OnEvent = Callable[[dict, Send], None]  # called for each of its event lines

ALL_SERVERS = ["modi-sync", "yws", "hocuspocus", "pycrdt-mem", "pycrdt-sqlite"]
OPTIONAL_SERVERS = ["yws-leveldb", "hocuspocus-sqlite"]  # only with --servers: W2 cold


@dataclass(frozen=True)
class Sizes:
    w1: dict
    w2_edits: int
    w2_entries: int
    w3: tuple[int, ...]
    settle_s: float


FULL = Sizes(
    w1={
        "50x4": {"docs": 50, "clientsPerDoc": 4, "edits": 1000, "window": 8, "durationMs": 20000},
        "1x50": {"docs": 1, "clientsPerDoc": 50, "edits": 400, "window": 4, "durationMs": 20000},
        "rate": {"docs": 50, "clientsPerDoc": 4, "rate": 5, "durationMs": 10000},
    },
    w2_edits=10_000,
    w2_entries=28_000,
    w3=(2000, 5000),
    settle_s=3.0,
)

QUICK = Sizes(
    w1={
        "50x4": {"docs": 3, "clientsPerDoc": 2, "edits": 30, "window": 8, "durationMs": 3000},
        "1x50": {"docs": 1, "clientsPerDoc": 4, "edits": 30, "window": 4, "durationMs": 3000},
        "rate": {"docs": 3, "clientsPerDoc": 2, "rate": 5, "durationMs": 1500},
    },
    w2_edits=200,
    w2_entries=500,
    w3=(30,),
    settle_s=0.5,
)

MODI_ENV = {
    # W1's 1x50 and W3 open far more sockets per user than the default 32.
    "MODI_MAX_CONNECTIONS_PER_USER": "100000",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the load generator ------------------------------------------------------------------


class LoadgenError(RuntimeError):
    pass


def run_loadgen(cfg: dict, on_event: OnEvent | None = None, timeout: float = 300.0) -> dict:
    """Run bench/loadgen.mjs on the client core; call ``on_event(event, send)`` for its
    event lines; return its result. Bounded by ``timeout``."""
    cfg = dict(cfg, hardLimitMs=int(timeout * 1000))
    cmd = pinned(["node", str(BENCH / "loadgen.mjs"), json.dumps(cfg)], CLIENT_CORE)
    proc = subprocess.Popen(cmd, cwd=BENCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    errors: list[str] = []

    def pump_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if len(errors) < 200:
                errors.append(line)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=pump_err, daemon=True).start()

    def send(word: str) -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    deadline = time.monotonic() + timeout + 10
    result = None
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            line = line.strip()
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if "event" in msg and on_event is not None:
                on_event(msg, send)
            elif "result" in msg:
                result = msg["result"]
                break
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if result is None:
        raise LoadgenError(f"load generator gave no result: {''.join(errors)[-2000:]}")
    return result


# -- servers -----------------------------------------------------------------------------


class Bench:
    """One server kind for the whole run: its data dir, its accounts (modi-sync)."""

    def __init__(self, kind: str, modi_rev: str) -> None:
        self.kind = kind
        if kind == "modi-sync":
            self.server: ModiServer | AnchorServer = ModiServer.fresh(
                MODI_ENV, src=modi_source(modi_rev))
        else:
            self.server = AnchorServer.fresh(kind)
        self._tokens: list[str] = []
        self._emails: list[str] = []  # of the accounts the tokens belong to
        self._tokens_at = 0.0

    @property
    def name(self) -> str:
        return self.server.name

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def tokens(self, count: int) -> list[str]:
        """Access tokens of ``count`` accounts (modi-sync); re-issued before they expire."""
        if not isinstance(self.server, ModiServer):
            return [""]
        if time.monotonic() - self._tokens_at > 600:  # access tokens live 15 minutes
            # The same accounts, logged in again: a document built before must still be
            # its owner's after (W2 cold reads it back).
            self._tokens = [self.server.login(email)["access_token"] for email in self._emails]
            self._tokens_at = time.monotonic()
        while len(self._tokens) < count:
            data = self.server.register()
            self._emails.append(data["user"]["email"])
            self._tokens.append(data["access_token"])
        return self._tokens[:count]

    def errors(self) -> int:
        return log_errors(self.server.log_path)

    def base_cfg(self, count: int) -> dict:
        return {"proto": self.server.proto, "urlTemplate": self.server.url_template(),
                "tokens": self.tokens(count)}

    def cleanup(self, keep_log: Path | None = None) -> None:
        self.server.cleanup(keep_log)


# -- workloads ---------------------------------------------------------------------------

_run_id = int(time.time()) % 100000


def _name(tag: str, rep: int) -> str:
    return f"b{_run_id}-{tag}-{rep}"


def _measured(bench: Bench, cfg: dict, on_event: OnEvent, timeout: float) -> dict:
    """The load generator's result (or why it failed), with the server's new error lines."""
    errors_before = bench.errors()
    try:
        result = run_loadgen(cfg, on_event, timeout=timeout)
    except LoadgenError as exc:
        result = {"ok": False, "error": str(exc)}
    result["server_log_errors"] = bench.errors() - errors_before
    return result


def w1(bench: Bench, sizes: Sizes, rep: int, restart: bool) -> list[dict]:
    """One run of each W1 sub-workload (a fresh server for each, unless ``restart`` is off)."""
    records = []
    started = False
    for sub, params in sizes.w1.items():
        if restart or not started:
            if started:
                bench.stop()
            bench.start()
            started = True
        # Connecting is not measured in W1: at most 50 at once (modi-sync answers 500
        # to some upgrades when ~100 arrive at once; see README.md).
        cfg = dict(bench.base_cfg(params["docs"]), mode="w1", docPrefix=_name(f"w1{sub}", rep),
                   concurrency=50, **params)
        monitor = bench.server.monitor()
        stats: dict = {}

        def on_event(msg: dict, send: Send, monitor: GroupMonitor = monitor,
                     stats: dict = stats) -> None:
            if msg["event"] == "load-start":
                monitor.start()
            elif msg["event"] == "load-end":
                stats.update(monitor.stop())

        result = _measured(bench, cfg, on_event, params["durationMs"] / 1000 + 150)
        result.update(stats)
        records.append({"workload": "W1", "sub": sub, "server": bench.kind, "rep": rep,
                        **result})
        log(f"  W1 {sub} rep {rep + 1}: " + _short(result, [
            "edits_per_s", "deliveries_per_s", "latency_p50_ms", "latency_p99_ms",
            "server_cpu_pct", "side_cpu_pct", "client_cpu_pct", "converged"]))
    bench.stop()
    return records


def w2(bench: Bench, sizes: Sizes, rep: int, warm_syncs: int) -> list[dict]:
    """Build both W2 documents, time ``warm_syncs`` fresh clients of each while they are
    in memory, then (servers with storage) restart and time one fresh client of each."""
    records = []
    bench.start()
    docs = {
        "10k": {"build": "edits", "edits": sizes.w2_edits},
        "big": {"build": "one", "entries": sizes.w2_entries},
    }
    built: dict[str, dict] = {}
    for tag, params in docs.items():
        cfg = dict(bench.base_cfg(1), mode="w2", docName=_name(f"w2{tag}", rep),
                   warmReps=warm_syncs, **params)

        def on_event(msg: dict, send: Send) -> None:
            if msg["event"] == "built":
                if not bench.server.wait_stored():
                    log("  (the store was still being written after the wait)")
                send("go")

        result = _measured(bench, cfg, on_event, 600)
        records.append({"workload": "W2", "sub": tag, "server": bench.kind, "phase": "warm",
                        "rep": rep, **result})
        log(f"  W2 {tag} warm rep {rep + 1}: " + _short(result, [
            "updates", "update_bytes", "state_bytes", "build_s", "warm_ms"]))
        if result.get("ok"):
            built[tag] = result
    if bench.server.has_storage and built:
        bench.stop()
        bench.start()
        for tag, info in built.items():
            cfg = dict(bench.base_cfg(1), mode="w2sync", docName=info["doc"],
                       expectStateVector=info["state_vector"], expectKeys=info["keys"],
                       noStdin=True)
            try:
                result = run_loadgen(cfg, timeout=300)
            except LoadgenError as exc:
                result = {"ok": False, "error": str(exc)}
            records.append({"workload": "W2", "sub": tag, "server": bench.kind,
                            "phase": "cold", "rep": rep, **result})
            log(f"  W2 {tag} cold rep {rep + 1}: " + _short(result, ["connect_ms", "apply_ms",
                                                                    "ok"]))
    bench.stop()
    return records


def w3(bench: Bench, sizes: Sizes, rep: int, concurrency: int) -> list[dict]:
    """One run of W3 at each socket count, on a fresh server each."""
    records = []
    for count in sizes.w3:
        bench.start()
        cfg = dict(bench.base_cfg(1), mode="w3", connections=count, concurrency=concurrency,
                   docPrefix=_name(f"w3x{count}", rep), holdMs=120000, connectTimeoutMs=60000)
        server = bench.server
        assert server.proc is not None
        time.sleep(sizes.settle_s)
        monitor = server.monitor()
        before = {"rss": rss_kb(server.proc.pid) or 0, "side": _side_pss(monitor)}
        stats: dict = {}

        def on_event(msg: dict, send: Send, monitor: GroupMonitor = monitor, stats: dict = stats,
                     before: dict[str, int] = before) -> None:
            if msg["event"] == "load-start":
                monitor.start()
            elif msg["event"] == "opened":
                stats.update(monitor.stop())
                time.sleep(sizes.settle_s)  # let the server settle before counting
                opened = max(msg["opened"], 1)
                rss = rss_kb(monitor.main_pid) or 0
                stats["rss_before_kb"] = before["rss"]
                stats["rss_after_kb"] = rss
                stats["rss_per_conn_kb"] = (rss - before["rss"]) / opened
                stats["side_pss_per_conn_kb"] = (_side_pss(monitor) - before["side"]) / opened
                stats["side_cpu_us_per_open"] = 1e6 * stats["side_cpu_s"] / opened
                send("close")

        result = _measured(bench, cfg, on_event, 240)
        result.update(stats)
        records.append({"workload": "W3", "sub": str(count), "server": bench.kind,
                        "rep": rep, **result})
        log(f"  W3 {count} rep {rep + 1}: " + _short(result, [
            "open_s", "opens_per_s", "rss_per_conn_kb", "side_pss_per_conn_kb",
            "client_cpu_pct", "ok"]))
        bench.stop()
    return records


def _side_pss(monitor: GroupMonitor) -> int:
    from common import descendants, pss_kb

    return sum(pss_kb(p) or 0 for p in descendants([monitor.main_pid, *monitor.helper_roots]))


def _short(result: dict, keys: list[str]) -> str:
    if not result.get("ok", False):
        return f"FAILED: {result.get('error')}"
    parts = []
    for k in keys:
        v = result.get(k)
        if isinstance(v, float):
            v = round(v, 1)
        elif isinstance(v, list):
            v = [round(x, 1) if isinstance(x, float) else x for x in v]
        parts.append(f"{k}={v}")
    return " ".join(parts)


# -- the report --------------------------------------------------------------------------


def _ok(r: dict) -> bool:
    return bool(r.get("ok")) and r.get("converged", True) is not False


def _med(records: list[dict], server: str, workload: str, sub: str, key: str,
         phase: str | None = None) -> float | None:
    rows = [r for r in records if r["server"] == server and r["workload"] == workload
            and r["sub"] == sub and (phase is None or r.get("phase") == phase)]
    if not rows or not all(_ok(r) for r in rows):
        return None
    values = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, list):
            values.extend(v)
        elif v is not None:
            values.append(v)
    return median(values)


def _with_rest(record: dict) -> dict:
    """A W2 record with each sync's time less the client's own apply of step 2: what is
    left is the server's part and the wire (the apply moved single runs by 100 ms)."""
    if record["workload"] != "W2":
        return record
    record = dict(record)
    if record.get("warm_apply_ms"):
        record["warm_rest_ms"] = [w - a for w, a in zip(record["warm_ms"],
                                                        record["warm_apply_ms"], strict=True)]
    if record.get("apply_ms") is not None and record.get("connect_ms") is not None:
        record["rest_ms"] = record["connect_ms"] - record["apply_ms"]
    return record


def _rows(sizes: Sizes) -> list[tuple]:
    """(label, workload, sub, key, phase, scale, digits, key for the anchors)."""
    rows = []
    for sub in sizes.w1:
        shape = sizes.w1[sub]
        tag = f"W1 {sub}" if sub != "rate" else f"W1 rate ({shape['rate']}/s per client)"
        rows += [
            (f"{tag} edits/s", "W1", sub, "edits_per_s", None, 1, 0, None),
            (f"{tag} deliveries/s", "W1", sub, "deliveries_per_s", None, 1, 0, None),
            (f"{tag} latency p50 ms", "W1", sub, "latency_p50_ms", None, 1, 1, None),
            (f"{tag} latency p99 ms", "W1", sub, "latency_p99_ms", None, 1, 1, None),
            (f"{tag} server CPU % of a core", "W1", sub, "server_cpu_pct", None, 1, 0, None),
            (f"{tag} server side CPU % (modi-sync: + PostgreSQL, Redis)", "W1", sub,
             "side_cpu_pct", None, 1, 0, "server_cpu_pct"),
            (f"{tag} server peak RSS MB", "W1", sub, "server_hwm_kb", None, 1 / 1024, 1, None),
            (f"{tag} server side peak MB (modi-sync: PSS with PostgreSQL, Redis)", "W1", sub,
             "side_peak_pss_kb", None, 1 / 1024, 1, "server_hwm_kb"),
            (f"{tag} client CPU % of a core", "W1", sub, "client_cpu_pct", None, 1, 0, None),
        ]
    many = f"W2 {sizes.w2_edits:,}-update doc"
    rows += [
        (f"{many}, warm ms", "W2", "10k", "warm_ms", "warm", 1, 0, None),
        (f"{many}, warm: of which the client applying step 2, ms", "W2", "10k",
         "warm_apply_ms", "warm", 1, 0, None),
        (f"{many}, warm: the rest (server and wire), ms", "W2", "10k", "warm_rest_ms",
         "warm", 1, 0, None),
        (f"{many}, cold ms", "W2", "10k", "connect_ms", "cold", 1, 0, None),
        (f"{many}, cold: of which the client applying step 2, ms", "W2", "10k", "apply_ms",
         "cold", 1, 0, None),
        (f"{many}, cold: the rest (server and wire), ms", "W2", "10k", "rest_ms", "cold", 1, 0,
         None),
        ("W2 one-update big doc, warm ms", "W2", "big", "warm_ms", "warm", 1, 0, None),
        ("W2 one-update big doc, cold ms", "W2", "big", "connect_ms", "cold", 1, 0, None),
        (f"{many}: kB of updates sent", "W2", "10k", "update_bytes", "warm", 1 / 1000, 0, None),
        ("W2 big doc: kB (one update)", "W2", "big", "update_bytes", "warm", 1 / 1000, 0, None),
    ]
    for n in sizes.w3:
        rows += [
            (f"W3 {n:,} conns, time to open all s", "W3", str(n), "open_s", None, 1, 2, None),
            (f"W3 {n:,} conns, opens/s", "W3", str(n), "opens_per_s", None, 1, 0, None),
            (f"W3 {n:,} conns, handshake p99 ms", "W3", str(n), "handshake_p99_ms", None, 1, 0,
             None),
            (f"W3 {n:,} conns, server RSS per conn kB", "W3", str(n), "rss_per_conn_kb", None,
             1, 1, None),
            (f"W3 {n:,} conns, server side per conn kB (modi-sync: PSS with PostgreSQL, Redis)",
             "W3", str(n), "side_pss_per_conn_kb", None, 1, 1, "rss_per_conn_kb"),
            (f"W3 {n:,} conns, server CPU % while opening", "W3", str(n), "server_cpu_pct", None,
             1, 0, None),
            (f"W3 {n:,} conns, server side CPU per open µs (modi-sync: + PostgreSQL, Redis)",
             "W3", str(n), "side_cpu_us_per_open", None, 1, 0, None),
            (f"W3 {n:,} conns, client CPU % while opening", "W3", str(n), "client_cpu_pct", None,
             1, 0, None),
        ]
    return rows


def _fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def report(records: list[dict], servers: list[str], sizes: Sizes, what_ran: str) -> str:
    names = {"modi-sync": "modi-sync", **{k: v[0] for k, v in ANCHORS.items()}}
    records = [_with_rest(r) for r in records]
    anchors = [s for s in servers if s != "modi-sync"]
    head = ["figure", "modi-sync"]
    for a in anchors:
        head += [names[a], "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for label, wl, sub, key, phase, scale, digits, anchor_key in _rows(sizes):
        if not any(r["workload"] == wl and r["sub"] == sub for r in records):
            continue
        vals = {}
        for s in servers:
            k = key if s == "modi-sync" or anchor_key is None else anchor_key
            v = _med(records, s, wl, sub, k, phase)
            vals[s] = None if v is None else v * scale
        if all(v is None for v in vals.values()):
            continue
        row = [label, _fmt(vals.get("modi-sync"), digits)]
        for a in anchors:
            row.append(_fmt(vals[a], digits))
            m, x = vals.get("modi-sync"), vals[a]
            row.append("–" if m is None or x in (None, 0) else f"{m / x:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    verdict = []
    for s in servers:
        mine = [r for r in records if r["server"] == s]
        bad = [r for r in mine if not _ok(r)]
        note = ""
        if bad:
            why = bad[0].get("convergence_error") or bad[0].get("error")
            note = f" (first failure: {bad[0]['workload']} {bad[0]['sub']}: {why})"
        errors = sum(r.get("server_log_errors") or 0 for r in mine)
        if errors:
            note += f" [the server logged {errors} error lines]"
        verdict.append(f"{names[s]}: {len(mine) - len(bad)}/{len(mine)} runs ok{note}")
    pin = "server on core 0, client on core 1" if have_taskset() else "NOT pinned (taskset missing)"
    # Runs per figure, counted: --report may pool files of runs with different --reps.
    per_figure = Counter(
        (r["server"], r["workload"], r["sub"], r.get("phase")) for r in records).values()
    runs = f"{min(per_figure)}" if min(per_figure) == max(per_figure) else \
        f"{min(per_figure)}-{max(per_figure)}"
    return ("\n".join(lines) + "\n\n"
            f"modi-sync at {what_ran}. "
            f"Medians of {runs} runs; {pin}. ratio = modi-sync / anchor (for rates, above 1 "
            "means modi-sync is faster; for ms, MB, kB and CPU, below 1 means modi-sync uses "
            "less). '–': not applicable (no storage to load from) or the runs failed.\n"
            "Convergence verified: " + "; ".join(verdict) + "\n")


def main() -> int:
    keep_off_server_core()  # before any thread starts: they inherit it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one run each (the test suite's smoke run)")
    parser.add_argument("--workloads", default="W1,W2,W3")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS),
                        help=f"from {', '.join(ALL_SERVERS + OPTIONAL_SERVERS)}")
    parser.add_argument("--reps", type=int, default=None, help="runs per figure (default 3; "
                        "1 with --quick)")
    parser.add_argument("--w1", default=None, help="W1 sub-workloads (default 50x4,1x50,rate)")
    parser.add_argument("--w3-concurrency", type=int, default=200, metavar="N",
                        help="W3: at most N connections opening at once (default 200)")
    parser.add_argument("--json", metavar="FILE", help="write every run's raw figures here")
    parser.add_argument("--logs", metavar="DIR", help="keep each server's log here")
    parser.add_argument("--report", metavar="FILES",
                        help="print the table from --json files of earlier runs (comma-separated;"
                        " with --quick for a quick run's), pooling their runs; run nothing")
    add_modi_rev(parser)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    reps = args.reps or (1 if args.quick else 3)
    if args.report:
        records = [r for f in args.report.split(",") for r in json.loads(Path(f).read_text())]
        servers = [s for s in ALL_SERVERS + OPTIONAL_SERVERS
                   if any(r["server"] == s for r in records)]
        ran = sorted({r["modi_sync"] for r in records if r.get("modi_sync")})
        print(report(records, servers, sizes, "; ".join(ran) or "a commit the files do not name"))
        return 0
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in ALL_SERVERS + OPTIONAL_SERVERS]
    if unknown or not servers:
        parser.error(f"unknown servers {unknown}")
    if args.w1:
        sizes = Sizes({k: v for k, v in sizes.w1.items() if k in args.w1.split(",")},
                      sizes.w2_edits, sizes.w2_entries, sizes.w3, sizes.settle_s)
    missing = node_ready() or anchors_ready(s for s in servers if s != "modi-sync")
    if missing:
        print(f"run.py: {missing}", file=sys.stderr)
        return 2
    if not have_taskset():
        log("warning: taskset or a second core is missing; server and client are not pinned")

    # The commit is fixed now: HEAD may move while the run goes on.
    described = "the work tree"
    if args.modi_rev != "worktree":
        out = subprocess.run(["git", "log", "-1", "--format=%h %s", args.modi_rev], cwd=BENCH,
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            args.modi_rev = out.stdout.split()[0]
            described = f"commit {out.stdout.strip()[:72]}"
    # SIGTERM ends the run like Ctrl-C: every server started so far is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    records: list[dict] = []
    started = time.monotonic()

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(records, indent=1, default=str))

    # Round-robin: each round runs every server once, so a machine that speeds up or
    # slows down during the run (it is shared) moves every server's figures alike.
    benches = {kind: Bench(kind, args.modi_rev) for kind in servers}
    try:
        for rep in range(reps):
            for kind, bench in benches.items():
                log(f"== round {rep + 1}/{reps}: {bench.name}"
                    + (f" ({bench.server.src})" if kind == "modi-sync" else ""))
                for workload in ("W1", "W2", "W3"):
                    if workload not in workloads:
                        continue
                    try:
                        if workload == "W1":
                            runs = w1(bench, sizes, rep, restart=not args.quick)
                        elif workload == "W2":
                            runs = w2(bench, sizes, rep, warm_syncs=3)
                        else:
                            runs = w3(bench, sizes, rep, args.w3_concurrency)
                    except Exception as exc:  # noqa: BLE001 - one broken workload, not the run
                        log(f"  {workload} broke off: {exc!r}")
                        runs = [{"workload": workload, "sub": "?", "server": kind,
                                 "ok": False, "error": f"broke off: {exc!r}"}]
                        bench.stop()
                    if kind == "modi-sync":  # so that --report can say what ran
                        for run in runs:
                            run["modi_sync"] = described
                    records += runs
                    save()
    finally:
        for kind, bench in benches.items():
            bench.cleanup(Path(args.logs) / f"{kind}.log" if args.logs else None)
    save()
    print(report(records, servers, sizes, described))
    log(f"total {time.monotonic() - started:.0f} s")
    return 0 if all(_ok(r) for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
