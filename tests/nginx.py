"""deploy/nginx.conf run for tests: a real nginx on loopback in front of given ports.

The nginx is ``MODI_TEST_NGINX`` or ``nginx`` on PATH (``.ci/run`` unpacks Debian's);
``NGINX`` is None without one, and the tests that need it skip. The configuration is
the deploy file itself, with only its upstream, listen address and file paths changed
(and, for the tests of a TLS terminator in front of it, the address it believes).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .conftest import OnLoopback, free_port

NGINX = os.environ.get("MODI_TEST_NGINX") or shutil.which("nginx")
DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"deploy/nginx.conf no longer has exactly one {old!r}"
    return text.replace(old, new)


def render(upstream_ports: list[int], port: int, run_dir: Path,
           terminator: str | None = None) -> str:
    """deploy/nginx.conf on loopback: its upstream and listen lines replaced, and nginx's
    own files (pid, logs, buffers) kept in ``run_dir``, in the foreground.

    ``terminator`` replaces the address whose X-Forwarded-For nginx believes (compose's
    gateway), for the tests of a TLS terminator in front: they need one on loopback.
    """
    conf = DEPLOY_CONF.read_text()
    servers = " ".join(f"server 127.0.0.1:{p};" for p in upstream_ports)
    conf = _replace_once(conf, "server api:8080 resolve;", servers)
    conf = _replace_once(conf, "listen 80;", f"listen 127.0.0.1:{port};")
    if terminator is not None:
        conf = _replace_once(conf, "set_real_ip_from 172.28.0.1;",
                             f"set_real_ip_from {terminator};")
    temp = "".join(f"{kind}_temp_path {run_dir / kind};"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    for log in ("access.log", "error.log"):
        conf = _replace_once(conf, f"/var/log/nginx/{log}", str(run_dir / log))
    conf = _replace_once(conf, "http {", f"http {{ {temp}")
    own = f"daemon off; master_process off; pid {run_dir / 'nginx.pid'};\n"
    return own + conf


class NginxProcess(OnLoopback):
    """One nginx in the foreground, its files in ``run_dir``."""

    def __init__(self, run_dir: Path, upstream_ports: list[int],
                 terminator: str | None = None) -> None:
        assert NGINX is not None
        self.run_dir = run_dir
        self.port = free_port()
        self.upstream_ports = upstream_ports
        self.terminator = terminator
        self.proc: subprocess.Popen | None = None

    @property
    def access_log(self) -> Path:
        return self.run_dir / "access.log"

    @property
    def error_log(self) -> Path:
        return self.run_dir / "error.log"

    def start(self, timeout: float = 10.0) -> NginxProcess:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = self.run_dir / "nginx.conf"
        conf.write_text(render(self.upstream_ports, self.port, self.run_dir, self.terminator))
        error_log = self.error_log
        self.proc = subprocess.Popen([NGINX, "-p", str(self.run_dir), "-e", str(error_log),
                                      "-c", str(conf)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.01)
        raise RuntimeError(f"nginx did not listen: {error_log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
