"""The operator's commands on document history: compact, history, restore.

They work through the documents service, like every server-side way into a document:
a restore is one update applied and stored like a client's, and reaches every instance.
Each returns an exit code a script can rely on:

| code | meaning |
|---|---|
| 0 | done (including "nothing to do") |
| 1 | at least one document failed; the others were done |
| 2 | bad arguments or settings |
| 3 | the named document does not exist |
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TextIO
from uuid import UUID

from storage.update_log import Compaction, DocumentInfo

from .contract import DOC_NAME
from .documents import Documents
from .errors import NotFound

OK, FAILED, USAGE, NOT_FOUND = 0, 1, 2, 3


class UsageError(ValueError):
    """The arguments cannot be used; the message says why."""


def parse_doc_ref(ref: str) -> tuple[UUID, str]:
    """``USER_ID/NAME`` -> (user id, name)."""
    user, _, name = ref.partition("/")
    try:
        user_id = UUID(user)
    except ValueError:
        raise UsageError(f"{ref!r} is not USER_ID/NAME") from None
    if not re.fullmatch(DOC_NAME, name):
        raise UsageError(f"{name!r} is not a document name")
    return user_id, name


def parse_timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{text!r} is not an ISO 8601 timestamp") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Totals:
    documents: int = 0
    failed: int = 0
    updates_before: int = 0
    updates_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    snapshots_dropped: int = 0  # by --purge

    def add(self, result: Compaction) -> None:
        self.documents += 1
        self.updates_before += result.updates_before
        self.updates_after += result.updates_after
        self.bytes_before += result.bytes_before
        self.bytes_after += result.bytes_after


class Progress:
    """A one-line bar on a terminal; nothing when output goes to a file or a pipe."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.out, self.done = total, out, 0
        self.enabled = out.isatty() and total > 0

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            filled = 30 * self.done // self.total
            bar = "#" * filled + "-" * (30 - filled)
            self.out.write(f"\r[{bar}] {self.done}/{self.total}")
            if self.done == self.total:
                self.out.write("\n")
            self.out.flush()


async def compact(
    documents: Documents,
    targets: list[DocumentInfo],
    *,
    snapshot_every: timedelta | None,
    retention: timedelta | None,
    dry_run: bool,
    purge: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Compact each target; with ``purge``, then drop every snapshot of it taken before
    (erasing one entry: docs/gdpr.md, "Erasing one entry"). Snapshots past ``retention``
    go too."""
    started = time.monotonic()
    totals = Totals()
    progress = Progress(len(targets), err)
    for info in targets:
        try:
            result = await documents.compact(info, snapshot_every=snapshot_every,
                                             dry_run=dry_run)
            if purge:
                totals.snapshots_dropped += await _purge(documents, info, result,
                                                         snapshot_every, dry_run)
        except Exception as exc:  # reported, counted, and the next document goes on
            totals.failed += 1
            err.write(f"\n{info.user_id}/{info.name}: not compacted: {exc}\n")
        else:
            totals.add(result)
        progress.step()
    purged = 0
    if retention is not None and not dry_run:
        purged = await documents.purge_snapshots(datetime.now(UTC) - retention)
    elapsed = time.monotonic() - started
    verb = "would compact" if dry_run else "compacted"
    dropped = (f"; {totals.snapshots_dropped} earlier snapshots of them "
               f"{'would be ' if dry_run else ''}dropped (--purge)") if purge else ""
    out.write(
        f"{verb} {totals.documents} documents: {totals.updates_before} -> "
        f"{totals.updates_after} updates, {totals.bytes_before} -> {totals.bytes_after} bytes, "
        f"in {elapsed:.2f} s; {totals.failed} failed; {purged} old snapshots purged{dropped}\n"
    )
    return FAILED if totals.failed else OK


async def _purge(documents: Documents, info: DocumentInfo, result: Compaction,
                 snapshot_every: timedelta | None, dry_run: bool) -> int:
    """Drop the snapshots taken before this compaction. The one it has just kept stays:
    it was made from the merged, garbage-collected state, so it holds nothing deleted
    before. It kept one only if it always keeps one (``timedelta(0)``) and compacted."""
    if dry_run:
        return len(await documents.snapshots(info))
    made_one = snapshot_every == timedelta(0) and result.updates_before > 0
    return await documents.purge_document_snapshots(info, keep_latest=made_one)


async def history(documents: Documents, user_id: UUID, name: str,
                  out: TextIO = sys.stdout) -> int:
    try:
        info = await documents.info(user_id, name)
    except NotFound:
        return NOT_FOUND
    out.write(f"{user_id}/{name}: {info.updates} stored updates, {info.size_bytes} bytes, "
              f"last change {info.updated_at.isoformat()}\n")
    snapshots = await documents.snapshots(info)
    if not snapshots:
        out.write("no snapshots (they are kept by compaction)\n")
    for snap in snapshots:
        out.write(f"{snap.taken_at.isoformat()}  {snap.size_bytes:>10} bytes  "
                  f"up to update {snap.cut_seq}\n")
    return OK


async def restore(documents: Documents, user_id: UUID, name: str, at: datetime,
                  out: TextIO = sys.stdout) -> int:
    try:
        size = await documents.restore(user_id, name, at)
    except NotFound:
        return NOT_FOUND
    if size is None:
        out.write(f"{user_id}/{name} already holds its content of {at.isoformat()}\n")
    else:
        out.write(f"restored {user_id}/{name} to {at.isoformat()} with one update "
                  f"of {size} bytes\n")
    return OK
