"""Structured logs: one JSON object a line, with a time a collector can read as it is."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from modi_sync.logs import JsonFormatter


def test_a_json_line_has_an_rfc3339_utc_time_and_the_request_id():
    record = logging.LogRecord("modi_sync", logging.WARNING, __file__, 1, "stored %d", (3,),
                               None)
    record.request_id = "req-1"
    entry = orjson.loads(JsonFormatter().format(record))
    logged = datetime.fromisoformat(entry["time"])
    assert logged.utcoffset() is not None and logged.utcoffset().total_seconds() == 0
    assert abs(logged - datetime.fromtimestamp(record.created, UTC)).total_seconds() < 0.001
    assert entry | {"time": None} == {"time": None, "level": "WARNING", "logger": "modi_sync",
                                      "message": "stored 3", "request_id": "req-1"}


def test_a_lines_fields_are_json_fields():
    """The access log's parts (modi_sync/access_log.py) are fields a collector can query."""
    record = logging.LogRecord("modi_sync.access", logging.INFO, __file__, 1, "GET /x 200",
                               (), None)
    record.fields = {"method": "GET", "path": "/x", "status": 200, "duration_ms": 1.5}
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry | {"time": None} == {"time": None, "level": "INFO",
                                      "logger": "modi_sync.access", "message": "GET /x 200",
                                      "method": "GET", "path": "/x", "status": 200,
                                      "duration_ms": 1.5}
