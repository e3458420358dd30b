"""Label-reading jobs: claims, leases, attempts (storage/images.py), and the whole path
for real: an upload to `modi-sync serve`, a `modi-sync worker` process running EasyOCR,
the status, and the reading arriving in a phone's document through y-websocket."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from storage.audit import AuditEntry
from storage.images import ImageStore, Job, NewImage, wake_workers
from storage.users import UserStore

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls, free_port
from .test_interop import node  # noqa: F401 - the fixture
from .yclient import eventually

LABELS = Path(__file__).parent / "labels"
LEASE = 30.0


def _truth() -> dict[str, dict[str, Any]]:
    return json.loads((LABELS / "truth.json").read_text())


# -- the queue, on its own ----------------------------------------------------------------


@pytest.fixture
async def user_id(pool) -> AsyncIterator[uuid.UUID]:
    user = await UserStore(pool).create(f"ocr-{uuid.uuid4().hex[:10]}@example.com", "x")
    yield user.id
    await pool.execute("DELETE FROM users WHERE id = $1", user.id)


async def _queued(pool, user_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """``count`` jobs, dated before any other test's so that claims take these first."""
    store = ImageStore(pool)
    ids = []
    for i in range(count):
        image_id = uuid.uuid4()
        assert await store.add(
            NewImage(image_id, user_id, "default", "image/png", 1, 1, b"photo %d" % i),
            AuditEntry("test", "image.upload", "image", user_id, str(image_id)),
            queue_max=1_000_000) is not None
        await pool.execute("UPDATE images SET created_at = $2 WHERE id = $1", image_id,
                           datetime(2000, 1, 1, tzinfo=UTC) + timedelta(seconds=i))
        ids.append(image_id)
    return ids


async def _claim(store: ImageStore, worker: str, max_attempts: int = 3) -> Job:
    job = await store.claim(worker, lease_seconds=LEASE, max_attempts=max_attempts)
    assert job is not None
    return job


async def _lease_runs_out(pool, image_id: uuid.UUID) -> None:
    """What the clock does to the lease of a worker that died."""
    await pool.execute("UPDATE images SET lease_until = now() - interval '1 second'"
                       " WHERE id = $1", image_id)


async def test_concurrent_claims_take_different_jobs(pool, user_id):
    ids = await _queued(pool, user_id, 2)
    store = ImageStore(pool)
    first, second = await asyncio.gather(_claim(store, "w1"), _claim(store, "w2"))
    assert {first.id, second.id} == set(ids)
    assert (first.attempt, second.attempt) == (1, 1)
    rows = await pool.fetch("SELECT status, worker FROM images WHERE id = ANY($1)", ids)
    assert sorted((r["status"], r["worker"]) for r in rows) == [
        ("processing", "w1"), ("processing", "w2")]


async def test_a_job_whose_worker_died_is_claimed_again_then_failed(pool, user_id):
    [image_id] = await _queued(pool, user_id, 1)
    store = ImageStore(pool)
    for attempt in (1, 2):
        job = await _claim(store, f"dies-{attempt}", max_attempts=2)
        assert (job.id, job.attempt, job.data) == (image_id, attempt, b"photo 0")
        await _lease_runs_out(pool, image_id)
    [ended] = [e for e in await store.fail_abandoned(2) if e.id == image_id]
    assert ended.status == "failed" and "stopped 2 times" in ended.error
    row = await pool.fetchrow("SELECT status, data, finished_at FROM images WHERE id = $1",
                              image_id)
    assert row["status"] == "failed" and row["data"] is None and row["finished_at"]


async def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_holder(pool, user_id):
    [image_id] = await _queued(pool, user_id, 1)
    store = ImageStore(pool)
    slow = await _claim(store, "slow")
    await _lease_runs_out(pool, image_id)
    fast = await _claim(store, "fast")
    assert fast.attempt == 2
    entry = AuditEntry("test", "image.read", "image", user_id, str(image_id))
    assert not await store.renew(slow, "slow", LEASE)
    assert await store.done(slow, "slow", {"calories": 1}, entry) is None
    assert await store.failed(slow, "slow", "late", 3) is None
    assert (await store.done(fast, "fast", {"calories": 2}, entry)).status == "done"
    record = await store.get(user_id, image_id)
    assert (record.status, record.result) == ("done", {"calories": 2})


async def test_a_failed_read_is_queued_again_until_its_last_attempt(pool, user_id):
    [image_id] = await _queued(pool, user_id, 1)
    store = ImageStore(pool)
    first = await _claim(store, "w", max_attempts=2)
    assert (await store.failed(first, "w", "unreadable", 2)).status == "queued"
    second = await _claim(store, "w", max_attempts=2)
    ended = await store.failed(second, "w", "unreadable again", 2)
    assert (ended.status, ended.error) == ("failed", "unreadable again")
    record = await store.get(user_id, image_id)
    assert (record.status, record.attempts, record.error) == ("failed", 2, "unreadable again")
    assert await store.data(user_id, image_id) is None  # the photo is not kept


# -- the whole path, for real ---------------------------------------------------------------

class WorkerProcess:
    """``modi-sync worker`` on the test session's services."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.metrics_port = free_port()
        env = dict(env, MODI_WORKER_METRICS_LISTEN=f"127.0.0.1:{self.metrics_port}")
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "modi_sync.cli", "worker"],
                                         env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_listening(self, timeout: float = 180.0) -> None:
        """Its metrics listener opens once the reader is loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.metrics_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)  # a process's port: no event to wait on
        raise AssertionError(f"the worker did not start: {self.log()}")

    def ended(self, outcome: str) -> float:
        """How many jobs this worker ended so, from its metrics listener."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
            text = resp.read().decode()
        return next((s.value for family in text_string_to_metric_families(text)
                     for s in family.samples if s.name == "modi_ocr_jobs_ended_total"
                     and s.labels == {"outcome": outcome}), 0.0)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture(scope="module")
def worker(services: ServiceUrls, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[WorkerProcess]:
    """One worker for the module (its reader takes seconds to load). Polling once in 300
    s: a job read sooner was woken through Redis."""
    pytest.importorskip("easyocr", reason="the ocr extra is not installed")
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
               JWT_SECRET=JWT_SECRET, MODI_OCR_POLL_SECONDS="300", MODI_OCR_MAX_ATTEMPTS="2")
    process = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log")
    process.wait_listening()
    yield process
    assert process.stop() == 0, process.log()


def _upload(server: ServerProcess, token: str, path: Path) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
               f"filename=\"{path.name}\"\r\nContent-Type: image/jpeg\r\n\r\n".encode())
    body.write(path.read_bytes())
    body.write(f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(
        server.http_url + "/api/v1/images", data=body.getvalue(),
        headers={"Authorization": f"Bearer {token}",
                 "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202
        return json.loads(resp.read())["data"]


def _status(server: ServerProcess, token: str, image_id: str) -> dict[str, Any]:
    req = urllib.request.Request(server.http_url + f"/api/v1/images/{image_id}",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["data"]


@pytest.fixture
def db_sync(services: ServiceUrls) -> Any:
    """``db_sync(sql, *args)``: the first column of each row, for a test without a loop."""
    def run(sql: str, *args: Any) -> list[Any]:
        async def query() -> list[Any]:
            conn = await asyncpg.connect(services.database_url)
            try:
                return [row[0] for row in await conn.fetch(sql, *args)]
            finally:
                await conn.close()
        return asyncio.run(query())
    return run


@pytest.mark.interop
def test_an_upload_is_read_by_a_worker_into_the_phones_document(
        server: ServerProcess, worker: WorkerProcess, node, db_sync):  # noqa: F811
    """The phone is connected with the real y-websocket provider; the reading reaches it
    through sync, and the image's status says done with the same values."""
    name = next(n for n, t in sorted(_truth().items()) if t.get("layout") == "us")
    token = server.register()["access_token"]
    node.connect(server, "phone", "default", token)
    image = _upload(server, token, LABELS / name)

    reply = node.call("wait_keys", id="phone", root="ocr_drafts", keys=[image["id"]],
                      timeout_ms=120_000, timeout=130)
    draft = reply["doc"]["ocr_drafts"][image["id"]]
    status = _status(server, token, image["id"])
    assert status["status"] == "done", worker.log()
    result = status["result"]
    # Really read (how well: tests/test_ocr_accuracy.py, over the whole set).
    assert "calories" in result["raw_text"].lower(), result
    assert sum(result[k] is not None for k in ("calories", "protein", "carbs", "fat")) >= 2
    for field in ("calories", "protein", "carbs", "fat", "serving_size_g", "raw_text"):
        assert draft[field] == result[field]
    assert draft["per_100g"] == result["per_100g"]
    actions = db_sync(
        "SELECT action FROM audit_log WHERE resource_id = $1 ORDER BY id", image["id"])
    assert actions == ["image.upload", "image.read"]


async def test_an_unreadable_photo_fails_with_a_reason_after_its_attempts(
        services: ServiceUrls, worker: WorkerProcess, pool, user_id):
    """Bytes that passed no upload check (put there directly): the reader refuses them,
    and the job fails at once, saying why (reading them again would change nothing)."""
    image_id = uuid.uuid4()
    failed_before = worker.ended("failed")
    await pool.execute(
        "INSERT INTO images (id, user_id, doc_name, content_type, width, height, size, data)"
        " VALUES ($1, $2, 'default', 'image/png', 1, 1, 4, 'junk')", image_id, user_id)
    await _wake(services.redis_url, image_id)

    async def failed() -> bool:
        return await pool.fetchval("SELECT status FROM images WHERE id = $1",
                                   image_id) == "failed"

    await eventually(failed, timeout=60)
    await eventually(lambda: worker.ended("failed") == failed_before + 1)
    record = await ImageStore(pool).get(user_id, image_id)
    assert record.error.startswith("unreadable") and record.attempts == 1, worker.log()
    actions = await pool.fetch("SELECT action FROM audit_log WHERE resource_id = $1",
                               str(image_id))
    assert [a["action"] for a in actions] == ["image.failed"]


async def _wake(redis_url: str, image_id: uuid.UUID) -> None:
    redis = Redis.from_url(redis_url)
    try:
        await wake_workers(redis, image_id)
    finally:
        await redis.aclose()
