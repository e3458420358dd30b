"""bench/loop_stalls: the diagnostic that ``bench/daily_summary.py --stalls`` loads into
the server finds a callback that holds the event loop, and says where, with the stock
loop and with uvloop (the server's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STALLS = Path(__file__).resolve().parent.parent / "bench" / "loop_stalls"

PROGRAM = """
import asyncio, gc, time
import {module}

def hold_the_loop():
    time.sleep(0.03)

async def main():
    await asyncio.sleep(0.02)
    asyncio.get_running_loop().call_soon(hold_the_loop)
    await asyncio.sleep(0.1)
    garbage = [[] for _ in range(300_000)]
    for item in garbage:
        item.append(item)  # cycles only the collector frees
    del garbage, item
    gc.collect()

loop = {module}.new_event_loop()
loop.run_until_complete(main())
loop.close()
"""


@pytest.mark.parametrize("module", ["asyncio", "uvloop"])
def test_a_held_loop_and_a_long_collection_are_reported(module: str, tmp_path: Path) -> None:
    out = tmp_path / "stalls.jsonl"
    env = dict(os.environ, MODI_BENCH_STALLS=str(out), PYTHONPATH=str(STALLS))
    subprocess.run([sys.executable, "-c", PROGRAM.format(module=module)], env=env,
                   check=True, timeout=60)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    held = [r for r in records if r["kind"] == "loop" and "hold_the_loop" in r["where"]]
    assert len(held) == 1 and held[0]["ms"] >= 25
    assert any(r["kind"] == "gc" and r["ms"] > 2 for r in records)
