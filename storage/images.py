"""Label photos and their OCR jobs, one row each (storage/migrations/005_images.sql).

A job is claimed by one ``UPDATE`` whose own condition settles a race: workers on any
machine take different jobs (``_CLAIM``). A claim is a lease: the worker renews it while it
reads, and a job whose lease ran out (its worker died) is claimed again, until its
attempts are used up; then it fails with a reason. Every change of a job is made only
by the worker holding its lease (``worker`` and ``status`` in the WHERE clause), so a
worker that lost its lease cannot overwrite the one that took the job over.

The photo's bytes are dropped when its job ends: they were an input, the reading is
what is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from . import audit
from .audit import AuditEntry

# Workers subscribe here; an upload publishes its image id. Only a wake-up: a worker
# that missed it finds the job at its next poll.
WAKE_CHANNEL = "ocr:jobs"


@dataclass(frozen=True, slots=True)
class NewImage:
    id: UUID
    user_id: UUID
    doc_name: str
    content_type: str
    width: int
    height: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image as its owner sees it: no bytes."""

    id: UUID
    doc_name: str
    content_type: str
    width: int
    height: int
    size: int
    status: str
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job: what the worker reads, and whose document gets the reading."""

    id: UUID
    user_id: UUID
    doc_name: str
    data: bytes
    attempt: int


@dataclass(frozen=True, slots=True)
class Ended:
    """A job that ended: its owner and document, for the audit log and the draft."""

    id: UUID
    user_id: UUID
    doc_name: str
    status: str
    error: str | None


_COLUMNS = """id, doc_name, content_type, width, height, size, status, attempts, result,
error, created_at, finished_at
"""
_SELECT = "SELECT " + _COLUMNS + "FROM images "

# The queue bound and the insert in one statement: a full queue inserts nothing.
_INSERT = """
INSERT INTO images (id, user_id, doc_name, content_type, width, height, size, data)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE (SELECT count(*) FROM images WHERE status IN ('queued', 'processing')) < $9
RETURNING id, doc_name, content_type, width, height, size, status, attempts, result,
          error, created_at, finished_at
"""
_GET = _SELECT + "WHERE user_id = $1 AND id = $2"
_OF_USER = _SELECT + "WHERE user_id = $1 ORDER BY created_at, id"

# The oldest job that is queued, or whose lease ran out with attempts left. No row lock
# picks it (Citus refuses FOR UPDATE over many users' shards): two workers may pick the
# same one, and the UPDATE's own condition, checked again on the newest row once the
# other's update is committed, leaves the later one with nothing (``claim`` tries again).
_CLAIM = """
UPDATE images SET status = 'processing', attempts = attempts + 1, worker = $2,
                  lease_until = now() + make_interval(secs => $3)
WHERE (user_id, id) IN (
    SELECT user_id, id FROM images
    WHERE (status = 'queued' OR (status = 'processing' AND lease_until < now()))
      AND attempts < $1
    ORDER BY created_at LIMIT 1)
  AND (status = 'queued' OR (status = 'processing' AND lease_until < now()))
  AND attempts < $1
RETURNING id, user_id, doc_name, data, attempts
"""
_ANY_CLAIMABLE = """
SELECT EXISTS (
    SELECT 1 FROM images
    WHERE (status = 'queued' OR (status = 'processing' AND lease_until < now()))
      AND attempts < $1)
"""
_CLAIM_TRIES = 5  # claims lost to other workers in a row before this one gives up
# Leases that ran out with no attempt left: their workers died every time.
_ABANDONED = """
UPDATE images SET status = 'failed', data = NULL, worker = NULL, lease_until = NULL,
                  finished_at = now(),
                  error = 'its worker stopped ' || attempts::text || ' times while reading it'
WHERE status = 'processing' AND lease_until < now() AND attempts >= $1
RETURNING id, user_id, doc_name, status, error
"""
_RENEW = """
UPDATE images SET lease_until = now() + make_interval(secs => $4)
WHERE user_id = $1 AND id = $2 AND worker = $3 AND status = 'processing'
"""
_DONE = """
UPDATE images SET status = 'done', result = $4::jsonb, data = NULL, worker = NULL,
                  lease_until = NULL, error = NULL, finished_at = now()
WHERE user_id = $1 AND id = $2 AND worker = $3 AND status = 'processing'
RETURNING id, user_id, doc_name, status, error
"""
# A read that failed: queued again while attempts are left, else failed for good.
_REQUEUED = """
UPDATE images SET status = 'queued', worker = NULL, lease_until = NULL, error = $4
WHERE user_id = $1 AND id = $2 AND worker = $3 AND status = 'processing'
RETURNING id, user_id, doc_name, status, error
"""
_FAILED = """
UPDATE images SET status = 'failed', worker = NULL, lease_until = NULL, error = $4,
                  data = NULL, finished_at = now()
WHERE user_id = $1 AND id = $2 AND worker = $3 AND status = 'processing'
RETURNING id, user_id, doc_name, status, error
"""
# Served by the partial index images_open: the scrape reads only the open jobs.
_OPEN = ("SELECT status, count(*) FROM images WHERE status IN ('queued', 'processing') "
         "GROUP BY status")
_PURGE = "DELETE FROM images WHERE created_at < $1"


def _record(row: asyncpg.Record) -> ImageRecord:
    result = row["result"]
    return ImageRecord(
        row["id"], row["doc_name"], row["content_type"], row["width"], row["height"],
        row["size"], row["status"], row["attempts"],
        None if result is None else orjson.loads(result), row["error"], row["created_at"],
        row["finished_at"])


def _ended(row: asyncpg.Record | None) -> Ended | None:
    if row is None:
        return None
    return Ended(row["id"], row["user_id"], row["doc_name"], row["status"], row["error"])


class ImageStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- the owner's side -------------------------------------------------------------------

    async def add(self, image: NewImage, entry: AuditEntry, *, queue_max: int,
                  ) -> ImageRecord | None:
        """Store the image, queue its job and log ``entry``, all or nothing; None,
        storing nothing, when ``queue_max`` jobs are open already."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _INSERT, image.id, image.user_id, image.doc_name, image.content_type,
                image.width, image.height, len(image.data), image.data, queue_max)
            if row is None:
                return None
            await audit.append(conn, entry)
        return _record(row)

    async def get(self, user_id: UUID, image_id: UUID) -> ImageRecord | None:
        row = await self._pool.fetchrow(_GET, user_id, image_id)
        return None if row is None else _record(row)

    async def of_user(self, user_id: UUID) -> list[ImageRecord]:
        """Every image of the user (the export): rows without bytes, a few hundred at
        most under the upload limit and retention."""
        return [_record(row) for row in await self._pool.fetch(_OF_USER, user_id)]

    async def data(self, user_id: UUID, image_id: UUID) -> bytes | None:
        """The photo, while it is held: until its job ends."""
        data: bytes | None = await self._pool.fetchval(
            "SELECT data FROM images WHERE user_id = $1 AND id = $2", user_id, image_id)
        return data

    async def open_jobs(self) -> dict[str, int]:
        """The jobs queued and being read, by status (the metrics' queue depth)."""
        return {row["status"]: row["count"] for row in await self._pool.fetch(_OPEN)}

    # -- the workers' side ------------------------------------------------------------------

    async def claim(self, worker: str, *, lease_seconds: float, max_attempts: int,
                    ) -> Job | None:
        """The oldest claimable job, now this worker's for ``lease_seconds``; None if
        there is none (or other workers took every one this tried for)."""
        for _ in range(_CLAIM_TRIES):
            row = await self._pool.fetchrow(_CLAIM, max_attempts, worker, lease_seconds)
            if row is not None:
                return Job(row["id"], row["user_id"], row["doc_name"], row["data"],
                           row["attempts"])
            if not await self._pool.fetchval(_ANY_CLAIMABLE, max_attempts):
                return None
        return None

    async def fail_abandoned(self, max_attempts: int) -> list[Ended]:
        rows = await self._pool.fetch(_ABANDONED, max_attempts)
        return [e for row in rows if (e := _ended(row)) is not None]

    async def renew(self, job: Job, worker: str, lease_seconds: float) -> bool:
        """Whether the lease is still this worker's."""
        status: str = await self._pool.execute(_RENEW, job.user_id, job.id, worker,
                                               lease_seconds)
        return status == "UPDATE 1"

    async def done(self, job: Job, worker: str, result: dict[str, Any], entry: AuditEntry,
                   ) -> Ended | None:
        """Keep the reading and log ``entry``; None when the lease was lost: another
        worker has the job now."""
        async with self._pool.acquire() as conn, conn.transaction():
            ended = _ended(await conn.fetchrow(
                _DONE, job.user_id, job.id, worker, orjson.dumps(result).decode()))
            if ended is not None:
                await audit.append(conn, entry)
        return ended

    async def failed(self, job: Job, worker: str, error: str, max_attempts: int,
                     ) -> Ended | None:
        """Queued again while attempts are left (``status`` says which); None when the
        lease was lost."""
        # Its attempts changed at its claim only: while the lease is this worker's
        # (the statements check that), they are the job's.
        statement = _REQUEUED if job.attempt < max_attempts else _FAILED
        return _ended(await self._pool.fetchrow(statement, job.user_id, job.id, worker, error))


async def wake_workers(redis: Redis, image_id: UUID) -> None:
    await redis.publish(WAKE_CHANNEL, str(image_id))


async def subscribe_wakeups(redis: Redis) -> PubSub:
    """Subscribed on return, so no upload published afterwards is missed."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(WAKE_CHANNEL)
    return pubsub


async def wakeups(pubsub: PubSub) -> AsyncIterator[None]:
    async for message in pubsub.listen():
        if message.get("type") == "message":
            yield None


async def purge(conn: asyncpg.Connection, before: datetime) -> int:
    """Delete images uploaded before ``before``, within retention's transaction."""
    status: str = await conn.execute(_PURGE, before)
    return int(status.split()[-1])
