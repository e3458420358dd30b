"""The GDPR export of a large account: time, bytes, and the server's memory (issue 21).

Starts ``modi-sync serve`` on loopback with its embedded PostgreSQL and Redis, in a
fresh data dir, pinned with everything it starts to CPU core 0 (this script runs on
core 1). Registers two accounts and stores their documents straight into PostgreSQL
through the storage package (``UpdateLog.create_documents`` and ``append_many``): each
document is ``--updates`` real single-edit Yjs updates made with pycrdt (one workout
set in ``workouts`` per update, bench/cold_load.py's ``make_updates``). One account has
``--docs`` documents (50), the other ``--few`` (5). Automatic compaction is off, so the
rows stay as written and every document is rebuilt from all of them.

Each run restarts the server, waits until it is idle, then streams
``GET /api/v1/users/me/export`` to /dev/null while a thread samples the server
process's RSS with psutil every 10 ms. It reports, as medians of ``--reps`` runs per
account (the accounts alternate): the total time, the bytes, and the peak RSS minus
the RSS just before the export. A constant-memory export shows the same peak for 5
documents as for 50; one that kept its rooms would grow by a room per document.

    .venv/bin/python bench/export.py [--docs 50] [--few 5] [--updates 10000] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cold_load import make_updates  # noqa: E402
from common import ModiServer, add_modi_rev, keep_off_server_core, median, modi_source  # noqa: E402

READ_SIZE = 256 * 1024
SAMPLE_EVERY = 0.01  # seconds between two RSS samples


async def store_documents(dsn: str, user_id: str, count: int, updates: int) -> int:
    """``count`` documents of ``updates`` stored updates each; the bytes stored."""
    from storage.database import create_pool
    from storage.update_log import UpdateLog

    pool = await create_pool(dsn, max_size=2)
    try:
        log = UpdateLog(pool)
        keys = [(uuid.UUID(user_id), f"doc-{i:03d}") for i in range(count)]
        total = 0
        for n, doc_id in enumerate(await log.create_documents(keys)):
            assert doc_id is not None
            rows = make_updates(updates, seed=n)
            await log.append_many([doc_id] * len(rows), rows)
            total += sum(len(r) for r in rows)
        return total
    finally:
        await pool.close()


class RssSampler:
    """The peak RSS of one process, sampled by a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.process.memory_info().rss)


def settled_rss(pid: int, seconds: float = 2.0) -> int:
    """The server's RSS once it has stopped moving (start-up work done)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + 30
    last = process.memory_info().rss
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = process.memory_info().rss
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


def export_once(server: ModiServer, token: str, expect_docs: int) -> dict:
    """Stream one export to /dev/null; time, bytes, and the server's RSS."""
    assert server.proc is not None
    before = settled_rss(server.proc.pid)
    req = urllib.request.Request(f"{server.http}/api/v1/users/me/export",
                                 headers={"Authorization": f"Bearer {token}"})
    size = documents = 0
    tail = b""
    t0 = time.perf_counter()
    with RssSampler(server.proc.pid) as sampler, open(os.devnull, "wb") as sink, \
            urllib.request.urlopen(req, timeout=600) as resp:  # loopback only
        while chunk := resp.read(READ_SIZE):
            sink.write(chunk)
            size += len(chunk)
            documents += (tail + chunk).count(b'"update":"') - tail.count(b'"update":"')
            tail = chunk[-16:]
    seconds = time.perf_counter() - t0
    if not tail.endswith(b"}}") or documents != expect_docs:
        raise RuntimeError(f"the export is not whole: {documents} documents, ends {tail!r}")
    return {"seconds": seconds, "bytes": size, "rss_before": before,
            "peak_over_before": sampler.peak - before, "peak": sampler.peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=50, help="documents of the large account")
    parser.add_argument("--few", type=int, default=5, help="documents of the small account")
    parser.add_argument("--updates", type=int, default=10_000, help="updates per document")
    parser.add_argument("--reps", type=int, default=3, help="runs per account (medians)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    add_modi_rev(parser)
    args = parser.parse_args()
    keep_off_server_core()

    server = ModiServer.fresh({"MODI_AUTO_COMPACT_UPDATES": "100000000",
                               "MODI_AUTO_COMPACT_BYTES": str(1 << 40),
                               "MODI_RATE_LIMIT_EXPORT": "1000/60"},
                              src=modi_source(args.modi_rev))
    accounts = {"many": args.docs, "few": args.few}
    raw: dict = {"updates_per_doc": args.updates, "runs": {name: [] for name in accounts}}
    try:
        server.start()
        emails, stored = {}, {}
        t0 = time.perf_counter()
        for name, count in accounts.items():
            account = server.register()
            emails[name] = account["user"]["email"]
            stored[name] = asyncio.run(store_documents(server.dsn(), account["user"]["id"],
                                                       count, args.updates))
        print(f"stored {sum(accounts.values())} documents of {args.updates} updates in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        raw["stored_bytes"] = stored
        for rep in range(args.reps):
            for name, count in accounts.items():
                server.stop()
                server.start()
                token = server.login(emails[name])["access_token"]
                result = export_once(server, token, count)
                print(f"run {rep + 1}, {count} documents: {result}", file=sys.stderr)
                raw["runs"][name].append(result)
    finally:
        server.cleanup()

    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    print(f"\nmodi-sync from {server.src}; documents of {args.updates:,} single-edit updates "
          f"({raw['stored_bytes']['many'] / args.docs / 1e6:.2f} MB stored each); medians "
          f"of {args.reps} runs, server restarted before each; server side on core 0.\n")
    print("| export, streamed to /dev/null | " + " | ".join(
        f"{count} documents" for count in accounts.values()) + " |")
    print("|---|" + "---:|" * len(accounts))
    rows = [("total time, s", lambda r: r["seconds"], 1, 2),
            ("bytes, MB", lambda r: r["bytes"], 1e6, 1),
            ("server RSS before, MB", lambda r: r["rss_before"], 1e6, 0),
            ("server peak RSS minus before, MB", lambda r: r["peak_over_before"], 1e6, 1)]
    for label, pick, scale, digits in rows:
        cells = []
        for name in accounts:
            value = median(pick(r) for r in raw["runs"][name])
            cells.append("n/a" if value is None else f"{value / scale:,.{digits}f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    worst = {name: max(r["peak_over_before"] for r in raw["runs"][name]) for name in accounts}
    print("\nlargest peak over before, MB: " + ", ".join(
        f"{accounts[name]} documents {value / 1e6:.1f}" for name, value in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
