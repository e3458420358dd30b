"""``GET /metrics``: off the public port unless a token is set, what it counts, and the
Grafana dashboard in deploy/ naming only metrics that exist."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Map

from modi_sync.app_keys import REGISTRY
from ocr_worker.metrics import REGISTRY as WORKER_REGISTRY

from .conftest import Client, free_port, register, synced
from .yclient import eventually

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of an exposition by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await resp.text()


async def test_the_public_port_has_no_metrics_without_a_token(client: Client):
    resp = await client.get("/metrics")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "NOT_FOUND"


async def test_with_a_token_the_public_port_asks_for_it(make_client):
    token = secrets.token_urlsafe(24)
    # A different last character, whatever the random token ends with.
    wrong = token[:-1] + ("y" if token.endswith("x") else "x")
    client = await make_client(metrics_token=token)
    for headers in ({}, {"Authorization": f"Bearer {wrong}"},
                    {"Authorization": token}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    resp = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert "modi_connections" in await resp.text()


async def test_the_metrics_listener_counts_sync_traffic(make_client, http):
    port = free_port()
    client = await make_client(metrics_listen=f"127.0.0.1:{port}")
    before = await scrape(http, port)
    user = await register(client)
    a = await synced(client, user["access_token"])
    b = await synced(client, user["access_token"])
    for i in range(20):
        a.workouts()[f"w{i}"] = Map({"name": "squat", "sets": i})
    await eventually(lambda: len(b.workouts()) == 20)

    after = await scrape(http, port)
    assert value(after, "modi_connections") == 2
    assert value(after, "modi_rooms") >= 1
    for name in ("modi_updates_received_total", "modi_updates_stored_total"):
        assert value(after, name) - value(before, name) >= 20, name
    for name in ("modi_updates_fanned_out_total", "modi_commit_batch_updates_count",
                 "modi_commit_seconds_count"):
        assert value(after, name) > value(before, name), name
    assert ("modi_ocr_jobs", (("status", "queued"),)) in samples(after)  # from PostgreSQL
    assert value(after, "process_resident_memory_bytes") > 10_000_000
    await a.disconnect()
    await b.disconnect()
    await eventually(lambda: client.app[REGISTRY].rooms == {})
    assert value(await scrape(http, port), "modi_connections") == 0


async def test_http_latency_is_labelled_by_route_template_never_by_path(make_client, http):
    port = free_port()
    client = await make_client(metrics_listen=f"127.0.0.1:{port}")
    user = await register(client)
    auth = {"Authorization": f"Bearer {user['access_token']}"}
    found = (await client.get("/api/v1/docs/meals-2026", headers=auth)).status
    assert (await client.get("/no/such/path-" + secrets.token_hex(4))).status == 404
    await client.get("/api/v1/docs/meals-2026", headers={"Authorization": "Bearer nonsense"})

    text = await scrape(http, port)
    assert value(text, "modi_http_request_seconds_count",
                 route="/api/v1/docs/{name}", method="GET", status=str(found)) >= 1
    assert value(text, "modi_http_request_seconds_count",
                 route="unmatched", method="GET", status="404") >= 1
    assert value(text, "modi_auth_failures_total", route="/api/v1/docs/{name}") >= 1
    assert "meals-2026" not in text and "path-" not in text


async def test_rate_limit_rejections_are_counted(make_client, http):
    port = free_port()
    client = await make_client(metrics_listen=f"127.0.0.1:{port}", rate_limit_user="2/60")
    user = await register(client)
    auth = {"Authorization": f"Bearer {user['access_token']}"}
    statuses = [(await client.get("/api/v1/docs", headers=auth)).status for _ in range(4)]
    assert 429 in statuses
    text = await scrape(http, port)
    assert value(text, "modi_rate_limit_rejections_total", route="/api/v1/docs") >= 1


async def test_updates_from_another_instance_are_timed_on_the_bus(make_client, http):
    port = free_port()
    first = await make_client(metrics_listen=f"127.0.0.1:{port}")
    second = await make_client()
    before = value(await scrape(http, port), "modi_bus_lag_seconds_count")
    user = await register(first)
    a = await synced(first, user["access_token"])
    b = await synced(second, user["access_token"])
    b.weights()["today"] = Map({"weight": 81.5})
    await eventually(lambda: "today" in a.weights())
    assert value(await scrape(http, port), "modi_bus_lag_seconds_count") > before
    await a.disconnect()
    await b.disconnect()


async def test_a_taken_metrics_port_is_logged_and_the_server_still_serves(make_client, caplog):
    port = free_port()
    await make_client(metrics_listen=f"127.0.0.1:{port}")
    second = await make_client(metrics_listen=f"127.0.0.1:{port}")
    assert (await second.get("/health")).status == 200
    assert any("metrics not served" in r.getMessage() for r in caplog.records)


async def test_every_metric_of_the_dashboard_exists(make_client, http):
    port = free_port()
    await make_client(metrics_listen=f"127.0.0.1:{port}")
    names = {family.name for family in text_string_to_metric_families(await scrape(http, port))}
    for family in WORKER_REGISTRY.collect():
        names.add(family.name)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    named = {re.sub(r"_(bucket|sum|count|total|created)$", "", name)
             for expr in exprs for name in re.findall(r"\b((?:modi|process)_[a-z_]+)", expr)}
    missing = {name for name in named if name not in names}
    assert not missing, f"the dashboard names metrics that do not exist: {missing}"
