"""The real Yjs client stack from npm against a real ``modi-sync serve`` process.

Node runs ``yjs`` and ``y-websocket``'s WebsocketProvider (``ws`` as its WebSocket)
through ``tests/interop/driver.mjs``, which takes JSON commands on stdin and answers on
stdout. Every provider has its BroadcastChannel disabled, so whatever one learns from
another went through the server. Install the packages with
``npm ci --prefix tests/interop``.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls
from .nginx import NGINX, NginxProcess

pytestmark = pytest.mark.interop

INTEROP_DIR = Path(__file__).parent / "interop"
DRIVER = INTEROP_DIR / "driver.mjs"


class NodeDriver:
    """One ``node driver.mjs`` process: ``call`` sends a command and returns its reply."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            ["node", str(DRIVER)], cwd=INTEROP_DIR, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
        )
        self.events: list[dict[str, Any]] = []
        self._replies: dict[int, dict[str, Any]] = {}
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._seq = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                message = {"event": "stdout", "line": line.rstrip("\n")}
            self._lines.put(message)
        self._lines.put(None)

    def _pump(self, deadline: float, waiting_for: str) -> None:
        """Take one message off stdout (a reply or an event) or fail at ``deadline``."""
        try:
            message = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"node: no {waiting_for} in time{self._stderr()}") from None
        if message is None:
            self._lines.put(None)  # stay at end of stream for later calls
            raise AssertionError(f"node exited waiting for {waiting_for}{self._stderr()}")
        if "seq" in message:
            self._replies[message["seq"]] = message
        else:
            self.events.append(message)

    def _stderr(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")[-3000:]
        return f"\n--- node stderr ---\n{text}" if text else ""

    def call(self, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        self._seq += 1
        seq = self._seq
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"seq": seq, "cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while seq not in self._replies:
            self._pump(deadline, f"reply to {cmd}")
        reply = self._replies.pop(seq)
        assert reply["ok"], f"node {cmd} failed: {reply['error']}"
        return reply

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self._pump(deadline, what)

    def connect(self, server: ServerProcess, cid: str, name: str, token: str) -> None:
        self.call("connect", id=cid, url=server.ws_url + "/sync", name=name, token=token)

    def dump(self, cid: str) -> dict[str, Any]:
        return self.call("dump", id=cid)["doc"]

    def edit(self, *ops: dict[str, Any]) -> None:
        self.call("edit", ops=list(ops))

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()  # the driver destroys its providers and exits
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeDriver]:
    if shutil.which("node") is None:
        pytest.fail("interop tests need Node.js 20+ on PATH")
    if not (INTEROP_DIR / "node_modules" / "y-websocket").is_dir():
        pytest.fail("the npm packages of the interop tests are not installed: "
                    "run `npm ci --prefix tests/interop`")
    driver = NodeDriver(tmp_path / "node.log")
    yield driver
    driver.close()


# -- the Magni schema, as ops of driver.mjs's `edit` command ---------------------------


def put(cid: str, root: str, key: str, value: Any) -> dict[str, Any]:
    return {"id": cid, "op": "put", "root": root, "key": key, "value": value}


def field(cid: str, root: str, key: str, name: str, value: Any) -> dict[str, Any]:
    return {"id": cid, "op": "field", "root": root, "key": key, "field": name, "value": value}


def delete(cid: str, root: str, key: str) -> dict[str, Any]:
    return {"id": cid, "op": "delete", "root": root, "key": key}


def workout(name: str, weight: float, day: int = 1, day_order: int = 0) -> dict[str, Any]:
    return {"name": name, "weight": weight, "sets": 5, "reps": 5, "notes": "", "day": day,
            "day_order": day_order}


def weight(kg: float, when: str) -> dict[str, Any]:
    return {"weight": kg, "date_time": when}


def food_log(food_id: str, grams: float) -> dict[str, Any]:
    return {"food_id": food_id, "quantity_g": grams, "meal_type": "lunch", "date": "2026-11-23"}


def new_id() -> str:
    return str(uuid.uuid4())


# -- the scenarios ---------------------------------------------------------------------


def test_concurrent_edits_converge(server: ServerProcess, node: NodeDriver):
    """Two providers edit at the same instant, the same and different keys: both end with
    the same document, and a fresh provider gets exactly that document from the server."""
    token = server.register()["access_token"]
    node.connect(server, "a", "default", token)
    node.connect(server, "b", "default", token)
    squat, shared, weigh_in, lunch = new_id(), new_id(), new_id(), new_id()
    node.edit(put("a", "workouts", squat, workout("squat", 100.0)))
    node.call("wait_keys", id="b", root="workouts", keys=[squat])

    # One turn of Node's event loop: neither provider can hear of the other's edits before
    # making its own, so all of these are concurrent.
    node.edit(
        field("a", "workouts", squat, "weight", 102.5),   # same field of one entry
        field("b", "workouts", squat, "weight", 105.0),
        field("a", "workouts", squat, "notes", "felt heavy"),  # different fields of it
        field("b", "workouts", squat, "reps", 8),
        put("a", "workouts", shared, workout("bench", 60.0, day=2)),  # same new key
        put("b", "workouts", shared, workout("deadlift", 140.0, day=3)),
        put("a", "weights", weigh_in, weight(80.5, "2026-11-23T08:00:00Z")),  # different keys
        put("b", "food_logs", lunch, food_log("food-1", 250.0)),
        put("a", "favorites", "food-1", True),
        put("b", "favorites", "food-2", True),
    )
    docs = node.call("converge", ids=["a", "b"])["docs"]
    assert docs["a"] == docs["b"]
    doc = docs["a"]

    entry = doc["workouts"][squat]
    assert entry["weight"] in (102.5, 105.0)
    assert entry["notes"] == "felt heavy" and entry["reps"] == 8  # both kept
    # A concurrently set key holds one writer's whole entry, never a mix of the two.
    assert doc["workouts"][shared] in (workout("bench", 60.0, day=2),
                                       workout("deadlift", 140.0, day=3))
    assert doc["weights"] == {weigh_in: weight(80.5, "2026-11-23T08:00:00Z")}
    assert doc["food_logs"] == {lunch: food_log("food-1", 250.0)}
    assert doc["favorites"] == {"food-1": True, "food-2": True}

    node.connect(server, "fresh", "default", token)
    assert node.dump("fresh") == doc


def test_offline_edits_merge_on_reconnect(server: ServerProcess, node: NodeDriver):
    """A provider that disconnects keeps editing; the online one too. After it reconnects
    both have every edit of both (deletions included) and the server has the same."""
    token = server.register()["access_token"]
    w1, w2, w3 = new_id(), new_id(), new_id()
    node.connect(server, "a", "log", token)
    node.connect(server, "b", "log", token)
    node.connect(server, "watcher", "log", token)
    node.edit(put("a", "workouts", w1, workout("squat", 100.0)),
              put("a", "workouts", w2, workout("bench", 60.0)),
              put("a", "workouts", w3, workout("row", 50.0)))
    node.call("converge", ids=["a", "b", "watcher"])

    node.call("disconnect", id="a")
    a_new, a_weight, b_new, b_food = new_id(), new_id(), new_id(), new_id()
    node.edit(
        put("a", "workouts", a_new, workout("ohp", 40.0, day=2)),
        field("a", "workouts", w1, "weight", 110.0),
        delete("a", "workouts", w2),
        put("a", "weights", a_weight, weight(81.0, "2026-11-24T07:30:00Z")),
        put("b", "workouts", b_new, workout("curl", 12.5, day=3)),
        field("b", "workouts", w1, "weight", 120.0),
        field("b", "workouts", w3, "notes", "from b"),
        put("b", "food_logs", b_food, food_log("food-9", 90.0)),
    )
    # b's edits went through the server (the watcher has them) while a, offline, lacks
    # them and the watcher lacks a's.
    node.call("wait_keys", id="watcher", root="food_logs", keys=[b_food])
    assert b_food not in node.dump("a")["food_logs"]
    watched = node.dump("watcher")
    assert a_new not in watched["workouts"] and w2 in watched["workouts"]

    node.call("reconnect", id="a")
    docs = node.call("converge", ids=["a", "b", "watcher"])["docs"]
    assert docs["a"] == docs["b"] == docs["watcher"]
    doc = docs["a"]
    assert set(doc["workouts"]) == {w1, w3, a_new, b_new}  # w2 deleted offline
    assert doc["workouts"][a_new] == workout("ohp", 40.0, day=2)
    assert doc["workouts"][b_new] == workout("curl", 12.5, day=3)
    assert doc["workouts"][w1]["weight"] in (110.0, 120.0)
    assert doc["workouts"][w3]["notes"] == "from b"
    assert doc["weights"] == {a_weight: weight(81.0, "2026-11-24T07:30:00Z")}
    assert doc["food_logs"] == {b_food: food_log("food-9", 90.0)}

    node.connect(server, "fresh", "log", token)
    assert node.dump("fresh") == doc


def test_restart_keeps_everything(embedded_server: ServerProcess, node: NodeDriver):
    """SIGTERM and a start on the same data dir (embedded PostgreSQL under it): a fresh
    provider gets all that was written before, and the old provider carries on."""
    server = embedded_server
    server.start()
    token = server.register()["access_token"]
    node.connect(server, "a", "default", token)
    node.connect(server, "b", "default", token)
    ops = []
    for day in range(1, 4):
        for order in range(3):
            ops.append(put("a", "workouts", new_id(), workout(f"lift {day}.{order}",
                                                             20.0 * order + day, day, order)))
    ops += [put("b", "weights", new_id(), weight(80.0 + i / 10, f"2026-11-{10 + i}T07:00:00Z"))
            for i in range(5)]
    ops += [put("b", "food_logs", new_id(), food_log("food-3", 120.0)),
            put("a", "favorites", "food-3", True)]
    node.edit(*ops)
    before = node.call("converge", ids=["a", "b"])["docs"]["a"]  # each got the other's via
    assert len(before["workouts"]) == 9 and len(before["weights"]) == 5  # the server

    assert server.stop() == 0  # graceful: SIGTERM
    # Nothing may resend its local state to the new process before the fresh provider
    # has looked: b is gone, a stays offline until the end.
    node.call("destroy", id="b")
    node.call("disconnect", id="a")
    server.start()

    node.connect(server, "fresh", "default", token)
    assert node.dump("fresh") == before

    node.call("reconnect", id="a")
    later = new_id()
    node.edit(put("a", "weights", later, weight(79.5, "2026-11-30T07:00:00Z")))
    node.call("wait_keys", id="fresh", root="weights", keys=[later])
    docs = node.call("converge", ids=["a", "fresh"])["docs"]
    assert docs["a"] == docs["fresh"]


STREAM_COUNT = 3000  # entries the writer puts, one every STREAM_INTERVAL_MS at most
STREAM_INTERVAL_MS = 2
KILL_AFTER = 200  # updates the receiver must have seen before the SIGKILL


def test_sigkill_loses_nothing_a_peer_saw(server: ServerProcess, node: NodeDriver):
    """The server is SIGKILLed while one provider streams updates to another: after a
    restart, every update the receiver had been sent is stored."""
    token = server.register()["access_token"]
    node.connect(server, "writer", "stream", token)
    node.connect(server, "receiver", "stream", token)
    node.call("watch", id="receiver", root="weights")
    node.call("stream", id="writer", root="weights", prefix="k", count=STREAM_COUNT,
              interval_ms=STREAM_INTERVAL_MS)

    def received() -> set[str]:
        return {e["key"] for e in node.events if e["event"] == "key"}

    node.wait_until(lambda: len(received()) >= KILL_AFTER, timeout=60,
                    what=f"{KILL_AFTER} updates at the receiver")
    server.kill()
    # Both are forgotten before the restart: neither may resend what it holds. The
    # destroy replies come after every event printed before them.
    sent = node.call("stop_stream", id="writer")["sent"]
    node.call("destroy", id="writer")
    node.call("destroy", id="receiver")
    assert not any(e["event"] == "stream_done" for e in node.events), "killed after the stream"
    seen = received()
    assert KILL_AFTER <= len(seen) <= sent < STREAM_COUNT

    server.start()
    node.connect(server, "fresh", "stream", token)
    stored = set(node.dump("fresh")["weights"])
    missing = seen - stored
    assert not missing, f"{len(missing)} of {len(seen)} received updates lost: {sorted(missing)}"


def test_a_provider_synced_before_compaction_converges_after_it(
        server: ServerProcess, node: NodeDriver):
    """A provider goes offline, the document's history is compacted (deleted entries
    garbage-collected), both sides edit; on reconnect everything converges."""
    token = server.register()["access_token"]
    node.connect(server, "phone", "plan", token)
    node.connect(server, "web", "plan", token)
    keep, drop, edit_me = new_id(), new_id(), new_id()
    node.edit(put("phone", "workouts", keep, workout("squat", 100.0)),
              put("phone", "workouts", drop, workout("dips", 0.0)),
              put("web", "workouts", edit_me, workout("row", 50.0)))
    node.call("converge", ids=["phone", "web"])
    node.call("disconnect", id="phone")
    node.edit(delete("web", "workouts", drop),
              field("web", "workouts", edit_me, "reps", 12))
    node.call("converge", ids=["web"])

    compacted = subprocess.run(
        [sys.executable, "-m", "modi_sync.cli", "compact", "--all"], env=server.env,
        capture_output=True, text=True, timeout=120)
    assert compacted.returncode == 0, compacted.stderr
    assert "compacted" in compacted.stdout and "0 failed" in compacted.stdout

    offline = new_id()
    node.edit(put("phone", "workouts", offline, workout("lunge", 30.0)),
              field("phone", "workouts", edit_me, "notes", "from the phone"))
    node.call("reconnect", id="phone")
    docs = node.call("converge", ids=["phone", "web"])["docs"]
    assert docs["phone"] == docs["web"]
    doc = docs["phone"]
    assert set(doc["workouts"]) == {keep, edit_me, offline}
    assert doc["workouts"][edit_me]["reps"] == 12
    assert doc["workouts"][edit_me]["notes"] == "from the phone"

    node.connect(server, "fresh", "plan", token)
    assert node.dump("fresh") == doc


@pytest.mark.skipif(NGINX is None, reason="no nginx (set MODI_TEST_NGINX)")
def test_providers_behind_nginx_ride_out_a_rolling_restart(
        server: ServerProcess, node: NodeDriver, tmp_path: Path):
    """Two instances behind deploy/nginx.conf, a provider on each. One instance is
    stopped (SIGTERM) while both keep editing: its provider reconnects by itself to the
    same address, lands on the other instance, and both end with every edit."""
    other = ServerProcess(tmp_path / "other", server.env)
    other.data_dir.mkdir()
    other.start()
    proxy = NginxProcess(tmp_path / "nginx", [server.port, other.port]).start()
    try:
        token = server.register()["access_token"]  # straight to the instance
        node.connect(proxy, "a", "gym", token)  # nginx takes turns: a on the first,
        node.connect(proxy, "b", "gym", token)  # b on the other
        before, during = new_id(), new_id()
        node.edit(put("a", "workouts", before, workout("squat", 100.0)))
        node.call("wait_keys", id="b", root="workouts", keys=[before])

        assert server.stop() == 0
        node.edit(put("a", "workouts", during, workout("row", 60.0)),
                  field("b", "workouts", before, "notes", "from b"))
        docs = node.call("converge", ids=["a", "b"])["docs"]
        assert set(docs["a"]["workouts"]) == {before, during}
        assert docs["a"]["workouts"][before]["notes"] == "from b"
        assert node.call("dump", id="a")["closes"] == [1001]  # moved once, by itself
        assert node.call("dump", id="b")["closes"] == []
        node.connect(proxy, "fresh", "gym", token)
        assert node.dump("fresh") == docs["a"]
    finally:
        proxy.stop()
        other.kill()


def test_a_provider_whose_update_is_over_the_frame_limit_is_told_1009(
    server: ServerProcess, node: NodeDriver
):
    """A 32 MiB update against the 4 MiB frame limit: the server closes while the provider
    is still sending, and the provider must read 1009, not a reset (1006)."""
    token = server.register()["access_token"]
    node.connect(server, "a", "default", token)
    node.edit({"op": "blob", "id": "a", "root": "workouts", "key": "big", "size": 32 << 20})
    assert node.call("wait_close", id="a")["closes"][0] == 1009


def test_presence_crosses_instances_and_leaves_by_close_silence_or_sigkill(
        services: ServiceUrls, node: NodeDriver, tmp_path: Path):
    """Devices of one user on two `modi-sync serve` processes, with the real provider:
    each sees the other's state; a clean close, a state no longer renewed, and an
    instance killed with SIGKILL each remove the state on the other instance within
    its awareness timeout (3 s here, far below the providers' own 30 s)."""
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=services.redis_url,
               JWT_SECRET=JWT_SECRET, MODI_AWARENESS_TIMEOUT="3", MODI_METRICS_LISTEN="off",
               MODI_RATE_LIMIT_AUTH="100000/60")  # the suite's clients share one address
    one, two = (ServerProcess(tmp_path / n, env) for n in ("one", "two"))
    for server in (one, two):
        server.data_dir.mkdir()
        server.start()
    try:
        token = one.register()["access_token"]
        ids = {cid: node.call("connect", id=cid, url=srv.ws_url + "/sync", name="default",
                              token=token)["client_id"]
               for cid, srv in (("phone", one), ("tab", one), ("laptop", two))}
        for cid in ("phone", "laptop"):  # live: renewed well within the timeout
            node.call("set_awareness", id=cid, state={"device": cid}, renew_ms=500)
        node.call("set_awareness", id="tab", state={"device": "tab"})  # never renewed
        seen = node.call("wait_awareness", id="laptop", client_id=ids["phone"])["states"]
        assert seen[str(ids["phone"])] == {"device": "phone"}
        node.call("wait_awareness", id="phone", client_id=ids["laptop"])

        # Silence: the tab's state goes after the timeout, on both instances.
        node.call("wait_awareness", id="laptop", client_id=ids["tab"])
        node.call("wait_awareness", id="laptop", client_id=ids["tab"], absent=True,
                  timeout_ms=6000)
        node.call("wait_awareness", id="phone", client_id=ids["tab"], absent=True,
                  timeout_ms=6000)
        node.call("destroy", id="tab")

        # A clean close: gone at once on the other instance.
        node.call("connect", id="watch", url=one.ws_url + "/sync", name="default",
                  token=token)
        node.call("wait_awareness", id="watch", client_id=ids["laptop"])
        node.call("destroy", id="laptop")
        node.call("wait_awareness", id="watch", client_id=ids["laptop"], absent=True,
                  timeout_ms=2000)

        # SIGKILL: the killed instance's clients leave the other's view by the timeout.
        ids["laptop"] = node.call("connect", id="laptop", url=two.ws_url + "/sync",
                                  name="default", token=token)["client_id"]
        node.call("set_awareness", id="laptop", state={"device": "laptop"}, renew_ms=500)
        node.call("wait_awareness", id="laptop", client_id=ids["phone"])
        one.kill()
        node.call("wait_awareness", id="laptop", client_id=ids["phone"], absent=True,
                  timeout_ms=6000)
    finally:
        for server in (one, two):
            if server.proc is not None and server.proc.poll() is None:
                server.kill()
