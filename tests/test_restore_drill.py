"""scripts/restore_drill.py against the embedded PostgreSQL of a running server: the
dump restores into a scratch database identical table by table, every document
rebuilds, and a damaged backup fails the drill."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from pycrdt import Doc, Map

from .conftest import ServerProcess

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "restore_drill.py"


def _drill(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=300)


def _update(key: str) -> bytes:
    doc: Doc = Doc()
    doc.get("workouts", type=Map)[key] = Map({"name": "squat", "sets": 5})
    return doc.get_update()


async def test_the_drill_restores_every_table_and_document_of_the_embedded_database(
        embedded_server: ServerProcess, http, tmp_path: Path):
    await asyncio.to_thread(embedded_server.start)
    token = (await asyncio.to_thread(embedded_server.register))["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    for name in ("gym", "meals"):
        for key in ("a", "b"):
            resp = await http.post(f"{embedded_server.http_url}/api/v1/docs/{name}/update",
                                   data=_update(key), headers={
                                       **auth, "Content-Type": "application/octet-stream"})
            assert resp.status == 200, await resp.text()

    dump = tmp_path / "modi.dump"
    done = await asyncio.to_thread(_drill, "--data-dir", str(embedded_server.data_dir),
                                   "--keep-dump", str(dump))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "restore drill passed" in done.stdout
    rows = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(
        r"^(\w+)\s+(\d+)\s+(\d+)\s+yes$", done.stdout, re.M)}
    assert rows["users"][0] >= 1 and rows["doc_updates"][0] >= 4
    assert all(source == restored for source, restored in rows.values())
    assert int(re.search(r"(\d+) documents rebuilt", done.stdout)[1]) >= 2

    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(dump.read_bytes()[: dump.stat().st_size // 2])
    failed = await asyncio.to_thread(_drill, "--data-dir", str(embedded_server.data_dir),
                                     "--backup", str(damaged))
    assert failed.returncode == 1
    assert "FAILED" in failed.stdout + failed.stderr
