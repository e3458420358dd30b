"""Where modi-sync spends its time under one benchmark workload, with py-spy.

Starts ``modi-sync serve`` (a snapshot of ``--modi-rev``, pinned to core 0 like
bench/run.py does), runs one workload of bench/loadgen.mjs against it while
``py-spy record`` samples the server process, and prints the functions that were on
the stack most often (own time and total time). py-spy comes from PyPI
(``bench/.venv-anchors/bin/pip install py-spy``); it is looked for there and on PATH.

    .venv/bin/python bench/profile_modi.py [--workload w1-50x4|w1-1x50|w1-rate|w2-cold|w3]
                                           [--connections 5000] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ANCHORS_PYTHON,
    CLIENT_CORE,
    ModiServer,
    add_modi_rev,
    keep_off_server_core,
    modi_source,
    pinned,
)
from run import FULL, MODI_ENV, run_loadgen  # noqa: E402


def _py_spy() -> str | None:
    local = ANCHORS_PYTHON.parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _summarise(collapsed: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"{samples} samples", "", "own time (function at the top of the stack):"]
    out += [f"{100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "total time (function anywhere on the stack):"]
    out += [f"{100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(top)]
    return "\n".join(out)


def main() -> int:
    keep_off_server_core()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="w1-50x4",
                        choices=["w1-50x4", "w1-1x50", "w1-rate", "w2-cold", "w3"])
    add_modi_rev(parser)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--connections", type=int, default=2000, help="W3: sockets to open")
    parser.add_argument("--out", default="/tmp/modi-profile.txt", help="collapsed stacks")
    args = parser.parse_args()
    spy = _py_spy()
    if spy is None:
        print("profile_modi: py-spy not found: bench/.venv-anchors/bin/pip install py-spy",
              file=sys.stderr)
        return 2

    server = ModiServer.fresh(MODI_ENV, src=modi_source(args.modi_rev))
    try:
        server.start()
        if args.workload.startswith("w1"):
            params = FULL.w1[args.workload[3:]]
            tokens = [server.register()["access_token"] for _ in range(params["docs"])]
            cfg = dict(params, mode="w1", docPrefix="prof", concurrency=50)
            seconds = params["durationMs"] / 1000 + 5
        elif args.workload == "w3":
            tokens = [server.register()["access_token"]]
            cfg = {"mode": "w3", "connections": args.connections, "concurrency": 200,
                   "docPrefix": "prof", "holdMs": 3000, "noStdin": True}
            seconds = 5 + args.connections / 200
        else:
            tokens = [server.register()["access_token"]]
            build = dict(mode="w2", docName="prof", build="edits", edits=FULL.w2_edits,
                         warmReps=1, noStdin=True, holdMs=0)
            base = {"proto": "y", "urlTemplate": server.url_template(), "tokens": tokens}
            info = run_loadgen(dict(base, **build), timeout=300)
            server.stop()
            server.start()
            cfg = dict(mode="w2sync", docName="prof", expectStateVector=info["state_vector"],
                       expectKeys=info["keys"], noStdin=True)
            seconds = 4
        cfg.update(proto="y", urlTemplate=server.url_template(), tokens=tokens)
        assert server.proc is not None
        collapsed = Path(args.out)
        spy_proc = subprocess.Popen(
            pinned([spy, "record", "--pid", str(server.proc.pid), "--rate", str(args.rate),
                    "--duration", str(int(seconds)), "--format", "raw", "--output",
                    str(collapsed), "--nonblocking"], CLIENT_CORE),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        result = run_loadgen(cfg, timeout=seconds + 150)
        spy_proc.wait(seconds + 60)
        keys = ["edits_per_s", "deliveries_per_s", "latency_p99_ms", "converged",
                "connect_ms", "opens_per_s", "ok"]
        print({k: result[k] for k in keys if k in result})
        print(_summarise(collapsed, args.top))
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
