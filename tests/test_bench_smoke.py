"""The benchmark keeps working: ``bench/run.py --quick`` against modi-sync alone.

It starts its own ``modi-sync serve`` (embedded PostgreSQL and Redis, loopback only),
runs every workload at tiny sizes, and must report figures with convergence verified.
Nothing here asserts on speed. Needs the bench's npm packages (``bash bench/setup.sh``
or ``npm ci --prefix bench``); without them the test is skipped and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

pytestmark = pytest.mark.interop


def _skip_without_node() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    for pkg in ("yjs", "lib0", "ws", "y-websocket"):
        if not (BENCH / "node_modules" / pkg).exists():
            pytest.skip("bench npm packages missing: run `npm ci --prefix bench`")


def test_quick_benchmark_reports_figures_and_convergence(tmp_path: Path) -> None:
    _skip_without_node()
    raw = tmp_path / "records.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--servers", "modi-sync",
         "--modi-rev", "worktree",
         "--json", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = json.loads(raw.read_text())
    by_workload = {r["workload"] for r in records}
    assert by_workload == {"W1", "W2", "W3"}
    for record in records:
        assert record["ok"], record
    w1 = [r for r in records if r["workload"] == "W1"]
    assert {r["sub"] for r in w1} == {"50x4", "1x50", "rate"}
    for r in w1:
        assert r["converged"] is True, r
        assert r["edits_completed"] == r["edits_sent"] > 0
        assert r["deliveries"] == r["deliveries_expected"]
        assert r["edits_per_s"] > 0 and r["latency_p99_ms"] >= r["latency_p50_ms"] > 0
        assert r["server_cpu_s"] >= 0 and r["server_hwm_kb"] > 0
    w2 = [r for r in records if r["workload"] == "W2"]
    assert {(r["sub"], r["phase"]) for r in w2} == {
        ("10k", "warm"), ("big", "warm"), ("10k", "cold"), ("big", "cold")}
    assert all(r.get("warm_ms") or r.get("connect_ms") for r in w2)
    w3 = [r for r in records if r["workload"] == "W3"]
    assert w3 and all(r["opened"] == r["connections"] == r["still_open"] for r in w3)
    # The printed table carries the figures and the convergence verdict.
    assert "| W1 50x4 edits/s |" in proc.stdout
    assert "-update doc, cold ms |" in proc.stdout
    assert "Convergence verified: modi-sync: 8/8 runs ok" in proc.stdout
    # --report prints the same table again from the saved runs, naming what ran.
    again = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--report", str(raw)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert [line for line in again.stdout.splitlines() if line.startswith("|")] == table
    assert "modi-sync at the work tree. Medians of 1 runs" in again.stdout


def test_cleanup_never_deletes_a_source_tree_it_did_not_snapshot(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from common import ModiServer
    finally:
        sys.path.remove(str(BENCH))
    tree = tmp_path / "work-tree"
    (tree / "modi_sync").mkdir(parents=True)
    server = ModiServer(data_dir=tmp_path / "data", src=tree)
    server.cleanup()
    assert (tree / "modi_sync").is_dir()  # a checkout passed in stays, whatever its path
