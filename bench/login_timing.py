"""Login time for an unknown email versus a wrong password (docs/security.md).

Starts ``modi-sync serve`` on loopback with its embedded services, registers one
account, then alternates the two kinds of failed login and reports each kind's
median and 90th percentile. Both must cost the same, or the answer time would tell
which emails have accounts.

    .venv/bin/python bench/login_timing.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, float]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    return status, time.perf_counter() - start


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()

    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="modi-bench-")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    # Every wrong password here is on one account: its backoff would answer 429 (and
    # skip Argon2) after a few, which is not what is measured.
    env.update(MODI_RATE_LIMIT_AUTH="1000000/60", MODI_LOGIN_FREE_FAILURES="1000000",
               JWT_SECRET="bench-" + "s" * 60)
    proc = subprocess.Popen([sys.executable, "-m", "modi_sync.cli", "serve", "--port",
                             str(port), "--data-dir", data_dir], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        base = f"http://127.0.0.1:{port}/api/v1/auth"
        email = f"bench-{time.time_ns()}@example.com"
        status, _ = _post(base + "/register", {"email": email, "password": "right password"})
        assert status == 201, status
        for _ in range(5):  # warm-up: the first Argon2 calls and connections
            _post(base + "/login", {"email": email, "password": "wrong password"})
        unknown, wrong = [], []
        for i in range(args.rounds):
            s1, t1 = _post(base + "/login", {"email": f"nobody-{i}@example.com",
                                            "password": "wrong password"})
            s2, t2 = _post(base + "/login", {"email": email, "password": "wrong password"})
            assert s1 == s2 == 401, (s1, s2)
            unknown.append(t1 * 1000)
            wrong.append(t2 * 1000)
    finally:
        proc.terminate()
        proc.wait(30)

    def row(name: str, values: list[float]) -> str:
        p90 = statistics.quantiles(values, n=10)[-1]
        return f"| {name} | {statistics.median(values):.1f} | {p90:.1f} |"

    print(f"login failures, {args.rounds} rounds each, alternating, loopback")
    print("| case | median ms | p90 ms |\n|---|---|---|")
    print(row("unknown email", unknown))
    print(row("wrong password", wrong))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    print(f"median ratio unknown/wrong: {ratio:.3f}")


if __name__ == "__main__":
    main()
