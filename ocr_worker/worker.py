"""``modi-sync worker``: claims label-reading jobs from PostgreSQL and reads them.

Any number of workers may run, on one machine or many: each claims its jobs with an
``UPDATE`` whose own condition settles a race (storage/images.py) and holds a lease it
renews while it reads. An upload wakes the workers through Redis; polling every ``ocr_poll_seconds``
is only the fallback (a wake-up lost while Redis was away). The reading runs in a
thread, so the lease is renewed meanwhile; the reader itself is loaded once.

A finished reading goes into the user's document first, under ``ocr_drafts``, keyed
by the image id, through the documents service (stored, then fanned out to every
instance like a client's update); only then is the job marked done. A worker that dies
in between leaves a job that is read again and the same draft written again: the
phone sees it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import start_http_server
from pycrdt import Doc, Map

from modi_sync.audit import Actor
from modi_sync.config import Settings, listen_address
from modi_sync.documents import Documents, open_documents
from modi_sync.errors import ModiError
from modi_sync.runtime import Storage, open_storage
from modi_sync.sync.listener import RedisListener
from storage.images import Ended, ImageStore, Job, subscribe_wakeups, wakeups

from .metrics import JOBS, READ_SECONDS, REGISTRY

log = logging.getLogger(__name__)

DRAFTS_ROOT = "ocr_drafts"
RETRY_SECONDS = 5.0  # after PostgreSQL or Redis failed the worker

# Reads a photo's bytes into the contract's ``result``; blocking, run in a thread.
Read = Callable[[bytes], dict[str, Any]]


def draft_update(image_id: uuid.UUID, result: dict[str, Any]) -> bytes:
    """A Yjs update that sets ``ocr_drafts[image_id]`` to the reading. It builds on
    nothing, so it integrates into any state of the document; a second one for the
    same image replaces the first."""
    doc: Doc[Any] = Doc()
    drafts = doc.get(DRAFTS_ROOT, type=Map)
    per_100g = result.get("per_100g")
    drafts[str(image_id)] = Map({
        **{key: value for key, value in result.items() if key != "per_100g"},
        "per_100g": None if per_100g is None else Map(per_100g),
    })
    return doc.get_update()


class Worker:
    def __init__(self, storage: Storage, documents: Documents, read: Read) -> None:
        settings = storage.settings
        self.name = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self._store: ImageStore = storage.images
        self._redis = storage.redis
        self._audit = storage.audit
        self._documents = documents
        self._read = read
        self._lease = settings.ocr_lease_seconds
        self._max_attempts = settings.ocr_max_attempts
        self._poll = settings.ocr_poll_seconds
        self._actor = Actor(f"ocr-worker-{self.name}", None)
        self._wake = asyncio.Event()

    async def run(self, *, stop: asyncio.Event) -> None:
        """Read jobs until ``stop`` is set; a job under way is finished first."""
        listener = RedisListener(self._redis, subscribe_wakeups, wakeups,
                                 lambda _: self._wake.set(), "ocr-wakeups",
                                 resubscribed=self._wake.set)
        await listener.start()
        log.info("worker %s: waiting for jobs", self.name)
        try:
            while not stop.is_set():
                try:
                    found = await self.work_once()
                except Exception:
                    # PostgreSQL or Redis away (a restart, a failover): the job under
                    # way, if any, is claimed again when its lease runs out.
                    log.exception("worker %s: taking a job failed; trying again soon",
                                  self.name)
                    await self._idle(stop, RETRY_SECONDS)
                    continue
                if not found:
                    await self._idle(stop, self._poll)
        finally:
            await listener.stop()

    async def work_once(self) -> bool:
        """Fail the jobs whose workers died too often, then claim and read one job;
        whether there was one."""
        for ended in await self._store.fail_abandoned(self._max_attempts):
            JOBS.labels("failed").inc()
            await self._log_failed(ended)
        self._wake.clear()  # an upload from now on wakes the idle wait
        job = await self._store.claim(self.name, lease_seconds=self._lease,
                                      max_attempts=self._max_attempts)
        if job is None:
            return False
        await self._process(job)
        return True

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        waking = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait([stopping, waking], timeout=seconds,
                           return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopping, waking):
            waiter.cancel()

    async def _process(self, job: Job) -> None:
        log.info("worker %s: reading image %s (attempt %d)", self.name, job.id, job.attempt)
        renewing = asyncio.ensure_future(self._renew(job))
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(self._read, job.data)
            READ_SECONDS.observe(time.perf_counter() - started)
        except ValueError as exc:  # the photo itself (reader.UnreadableImage): no retry
            log.warning("worker %s: image %s is unreadable: %s", self.name, job.id, exc)
            await self._fail(job, f"unreadable: {exc}", retry=False)
            return
        except Exception as exc:  # the reader failed (memory, say): another attempt
            # Logged without the image: a user's photo is not for the log.
            log.warning("worker %s: reading image %s failed: %s", self.name, job.id, exc)
            await self._fail(job, f"reading failed: {exc}")
            return
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        try:
            await self._documents.apply(job.user_id, job.doc_name, draft_update(job.id, result))
        except ModiError as exc:  # the document is at its size limit or the user's quota
            await self._fail(job, f"the reading could not be written to the document: {exc}",
                             retry=False)
            return
        entry = self._actor.entry("image.read", "image", user_id=job.user_id,
                                  resource_id=str(job.id),
                                  details={"confidence": result.get("confidence")})
        if await self._store.done(job, self.name, result, entry) is None:
            log.info("worker %s: image %s was taken over by another worker", self.name, job.id)
        else:
            JOBS.labels("done").inc()

    async def _fail(self, job: Job, error: str, *, retry: bool = True) -> None:
        attempts = self._max_attempts if retry else job.attempt
        ended = await self._store.failed(job, self.name, error[:500], attempts)
        if ended is not None:
            JOBS.labels("failed" if ended.status == "failed" else "retry").inc()
            if ended.status == "failed":
                await self._log_failed(ended)

    async def _renew(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                renewed = await self._store.renew(job, self.name, self._lease)
            except Exception as exc:  # tried again in a third of the lease
                log.warning("worker %s: renewing the lease of image %s failed: %s",
                            self.name, job.id, exc)
                continue
            if not renewed:
                log.warning("worker %s: lost the lease of image %s", self.name, job.id)
                return

    async def _log_failed(self, ended: Ended) -> None:
        await self._audit.append(self._actor.entry(
            "image.failed", "image", user_id=ended.user_id, resource_id=str(ended.id),
            details={"error": ended.error}))


async def run_worker(settings: Settings, read: Read, *, stop: asyncio.Event) -> None:
    with _metrics_listener(settings):
        async with open_storage(settings) as storage, open_documents(storage) as documents:
            await Worker(storage, documents, read).run(stop=stop)


@contextlib.contextmanager
def _metrics_listener(settings: Settings) -> Iterator[None]:
    """prometheus-client's own HTTP server, in a thread: the worker serves nothing else.
    A port already taken is logged, and the worker works on."""
    if settings.worker_metrics_listen == "off":
        yield
        return
    host, port = listen_address(settings.worker_metrics_listen, "MODI_WORKER_METRICS_LISTEN")
    try:
        server, thread = start_http_server(port, host, registry=REGISTRY)
    except OSError as exc:
        log.warning("metrics not served on %s: %s", settings.worker_metrics_listen, exc)
        yield
        return
    try:
        yield
    finally:
        server.shutdown()
        thread.join(5)
