"""Measured on the schema before migration 006 (doc_updates without user_id and per-document
seq): run it on a checkout of that time (e.g. 3c52265); its figures are in docs/performance.md.

What the popular list's note costs the group commit: one batch's statement with the
note (storage/update_log.py's ``_APPEND``) against the same statement without it.

Starts an embedded PostgreSQL in a fresh directory (the server's own kind, fsync and
synchronous commit on), migrates it, makes ``--docs`` documents, then stores batches
of ``--batch`` single updates (``--size`` bytes each, to as many documents) with each
statement in turn, ``--reps`` times each, alternating so that drift hits both alike.
Reports the median and p99 of a batch's round trip for each, and the difference.
Most batches of a busy server note documents already noted (the aggregator takes the
notes once a minute), so ``--fresh`` clears the notes before every noted batch to show
the other case too.

    .venv/bin/python bench/group_commit_note.py [--batch 64] [--reps 400] [--fresh]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import median  # noqa: E402

# The statement before the note (storage/update_log.py at 2dca7e5^).
_PLAIN = """
INSERT INTO doc_updates (doc_id, data)
SELECT d, u FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS t(d, u, o)
ORDER BY o
RETURNING seq
"""


async def run(dsn: str, args: argparse.Namespace) -> dict[str, list[float]]:
    import asyncpg

    from storage.database import migrate
    from storage.update_log import _APPEND

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await migrate(pool)
    async with pool.acquire() as conn:
        user_id = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
            f"bench-{uuid.uuid4().hex[:8]}@example.com")
        doc_ids = [r[0] for r in await conn.fetch(
            "INSERT INTO documents (user_id, name) SELECT $1, 'd' || g"
            " FROM generate_series(1, $2) g RETURNING id", user_id, args.docs)]
        times: dict[str, list[float]] = {"without the note": [], "with the note": []}
        for _ in range(args.reps):
            batch = random.sample(doc_ids, args.batch)
            data = [random.randbytes(args.size) for _ in batch]
            for label, statement in (("without the note", _PLAIN), ("with the note", _APPEND)):
                if args.fresh and statement is _APPEND:
                    await conn.execute("DELETE FROM food_log_changes")
                t0 = time.perf_counter()
                await conn.fetch(statement, batch, data)
                times[label].append(time.perf_counter() - t0)
    await pool.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000, help="documents written to")
    parser.add_argument("--batch", type=int, default=64, help="documents per batch")
    parser.add_argument("--size", type=int, default=200, help="bytes per update")
    parser.add_argument("--reps", type=int, default=400, help="batches per statement")
    parser.add_argument("--fresh", action="store_true",
                        help="no document of a noted batch is noted already")
    args = parser.parse_args()

    from storage.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="modi-bench-note-")) / "pg")
    try:
        times = asyncio.run(run(pg.start(), args))
    finally:
        pg.stop()

    print(f"\n{args.reps} batches of {args.batch} updates of {args.size} B each way, "
          f"{'fresh' if args.fresh else 'already noted'} documents\n")
    print("| group commit statement | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    for label, values in times.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        print(f"| {label} | {(median(values) or 0) * 1e3:.3f} | {p99 * 1e3:.3f} |")
    plain, noted = (median(v) or 0 for v in times.values())
    print(f"\nthe note costs {(noted - plain) * 1e3:+.3f} ms a batch (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
