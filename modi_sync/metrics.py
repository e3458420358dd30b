"""The server's Prometheus metrics (docs/operations.md, "Metrics").

One endpoint per process: each instance is scraped on its own, so the counters live in
this process's registry and need no multiprocess files. What is counted as it happens
is defined here and incremented where it happens (a lock and an add each, off the
per-peer loop); what is a level (connections, rooms, bytes waiting) is read at scrape
time (``exposition``) and costs the hot path nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, open fds, CPU

UPDATES_RECEIVED = Counter(
    "modi_updates_received", "Yjs updates received from clients (websocket and HTTP)",
    registry=REGISTRY)
UPDATES_STORED = Counter(
    "modi_updates_stored", "updates stored by the group commit", registry=REGISTRY)
UPDATES_FANNED_OUT = Counter(
    "modi_updates_fanned_out", "update messages queued to peers, one per peer",
    registry=REGISTRY)
COMMIT_BATCH = Histogram(
    "modi_commit_batch_updates", "updates per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=REGISTRY)
COMMIT_SECONDS = Histogram(
    "modi_commit_seconds", "time to store one group commit",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY)
COMMIT_FAILURES = Counter(
    "modi_commit_failures", "group commits that could not be stored", registry=REGISTRY)
CLIENTS_DROPPED = Counter(
    "modi_clients_dropped", "connections dropped past their send budget (not reading)",
    registry=REGISTRY)
BUS_LAG = Histogram(
    "modi_bus_lag_seconds", "from another instance's publish to its receipt here",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
    registry=REGISTRY)
CATCH_UPS = Counter(
    "modi_catch_ups", "times this instance read its rooms again after a gap on the bus",
    registry=REGISTRY)
HTTP_SECONDS = Histogram(
    "modi_http_request_seconds", "HTTP requests by route template, method and status",
    ["route", "method", "status"], registry=REGISTRY)
RATE_LIMITED = Counter(
    "modi_rate_limit_rejections", "requests and sockets refused by a rate limit",
    ["route"], registry=REGISTRY)
AUTH_FAILURES = Counter(
    "modi_auth_failures", "requests answered 401 (bad, expired or revoked credentials)",
    ["route"], registry=REGISTRY)

CONNECTIONS = Gauge("modi_connections", "open sync websockets", registry=REGISTRY)
ROOMS = Gauge("modi_rooms", "documents in memory", registry=REGISTRY)
SEND_QUEUE_BYTES = Gauge(
    "modi_send_queue_bytes", "bytes waiting for peers to read them", registry=REGISTRY)
BUS_BACKLOG = Gauge(
    "modi_bus_backlog_updates", "stored updates not yet published to the other instances",
    registry=REGISTRY)
OCR_JOBS = Gauge(
    "modi_ocr_jobs", "label-photo jobs waiting or being read, all users", ["status"],
    registry=REGISTRY)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exposition(waiting: Iterable[int], rooms: int, bus_backlog: int,
               ocr_jobs: dict[str, int] | None) -> bytes:
    """The metrics in Prometheus's text format, the levels set first: ``waiting``, the
    bytes waiting for each open connection; ``ocr_jobs`` None when unknown."""
    count = total = 0
    for pending in waiting:
        count += 1
        total += pending
    CONNECTIONS.set(count)
    SEND_QUEUE_BYTES.set(total)
    ROOMS.set(rooms)
    BUS_BACKLOG.set(bus_backlog)
    if ocr_jobs is not None:
        for status in ("queued", "processing"):
            OCR_JOBS.labels(status).set(ocr_jobs.get(status, 0))
    return generate_latest(REGISTRY)
