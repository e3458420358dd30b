"""The worker's Prometheus metrics: what became of the jobs it took, and how long a
reading took. A worker is a process of its own, scraped on its own listener
(``MODI_WORKER_METRICS_LISTEN``, docs/operations.md, "Metrics"); the queue's depth is
the server's to say, read from PostgreSQL at its scrape."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

JOBS = Counter("modi_ocr_jobs_ended", "jobs this worker ended, by outcome (done, failed, "
               "retry: given back for another attempt)", ["outcome"], registry=REGISTRY)
READ_SECONDS = Histogram("modi_ocr_read_seconds", "time to read one photo",
                         buckets=(0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60), registry=REGISTRY)
for outcome in ("done", "failed", "retry"):
    JOBS.labels(outcome)  # every outcome is in the first scrape, at 0
