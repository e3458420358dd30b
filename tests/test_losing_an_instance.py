"""Three `modi-sync serve` instances behind deploy/nginx.conf, real y-websocket providers
streaming edits through nginx: one instance is killed with SIGKILL mid-stream, then
Redis is restarted mid-stream. Each time every provider ends with every edit, and the
stored state holds every edit any provider saw."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import JWT_SECRET, ServerProcess, ServiceUrls
from .faults import RedisServer
from .nginx import NGINX, NginxProcess
from .test_interop import NodeDriver, node  # noqa: F401 - node: the fixture

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(NGINX is None, reason="no nginx (set MODI_TEST_NGINX)")]

CLIENTS = 6  # two on each instance: nginx takes turns
COUNT = 80  # edits per provider and phase
INTERVAL_MS = 25  # 2 s of streaming per phase


@pytest.fixture
def cluster(services: ServiceUrls, tmp_path: Path
            ) -> Iterator[tuple[list[ServerProcess], NginxProcess, RedisServer]]:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    env = dict(os.environ, DATABASE_URL=services.database_url, REDIS_URL=redis.url,
               JWT_SECRET=JWT_SECRET, MODI_METRICS_LISTEN="off",
               MODI_BUS_RECHECK_SECONDS="1", MODI_RATE_LIMIT_AUTH="100000/60")
    servers = [ServerProcess(tmp_path / f"i{n}", env) for n in range(3)]
    for server in servers:
        server.data_dir.mkdir()
        server.start()
    proxy = NginxProcess(tmp_path / "nginx", [s.port for s in servers]).start()
    yield servers, proxy, redis
    proxy.stop()
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
    redis.stop()


def _stream_all(driver: NodeDriver, ids: list[str], prefix: str) -> None:
    for cid in ids:
        driver.call("stream", id=cid, root="weights", prefix=f"{prefix}-{cid}-", count=COUNT,
                  interval_ms=INTERVAL_MS)


def _streams_done(driver: NodeDriver, ids: list[str], prefix: str) -> None:
    def done() -> set[str]:
        return {e["id"] for e in driver.events if e["event"] == "stream_done"}

    driver.wait_until(lambda: done() >= set(ids), timeout=60, what=f"the {prefix} streams")
    driver.events.clear()
    for cid in ids:
        driver.call("stop_stream", id=cid)  # ready for the next phase


def _expected(ids: list[str], *prefixes: str) -> set[str]:
    return {f"{p}-{cid}-{i}" for p in prefixes for cid in ids for i in range(COUNT)}


def test_a_killed_instance_and_a_redis_restart_lose_nothing(cluster, node: NodeDriver):  # noqa: F811
    servers, proxy, redis = cluster
    token = servers[0].register()["access_token"]
    ids = [f"c{n}" for n in range(CLIENTS)]
    for cid in ids:
        node.connect(proxy, cid, "gym", token)

    # An instance killed mid-stream: its providers reconnect through nginx to the others.
    _stream_all(node, ids, "kill")
    time.sleep(0.5)  # mid-stream: the streams run for 2 s
    servers[1].kill()
    _streams_done(node, ids, "kill")
    docs = node.call("converge", ids=ids, timeout_ms=30_000, timeout=40)["docs"]
    assert set(docs["c0"]["weights"]) == _expected(ids, "kill")
    moved = [cid for cid in ids if node.call("dump", id=cid)["closes"]]
    assert len(moved) == 2, moved  # the two on the killed instance, and only they

    # Redis restarted mid-stream: the instances catch up from PostgreSQL.
    _stream_all(node, ids, "redis")
    time.sleep(0.5)
    redis.stop()
    time.sleep(1.0)  # Redis away for a second: the point of the phase
    redis.start()
    _streams_done(node, ids, "redis")
    docs = node.call("converge", ids=ids, timeout_ms=30_000, timeout=40)["docs"]
    everything = _expected(ids, "kill", "redis")
    assert set(docs["c0"]["weights"]) == everything

    # What is stored holds every edit any provider saw: a fresh provider, and a fresh
    # instance that has no room in memory, read it from PostgreSQL.
    node.connect(proxy, "fresh", "gym", token)
    assert set(node.dump("fresh")["weights"]) == everything
    servers[1].start()
    node.connect(servers[1], "cold", "gym", token)
    assert node.dump("cold") == node.dump("fresh")
