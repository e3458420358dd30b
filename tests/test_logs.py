"""Structured logs: one JSON object a line, with a time a collector can read as it is."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import orjson

from modi_sync.logs import ConnectionFilter, JsonFormatter, TextFormatter, bind_connection


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


def test_a_text_line_of_a_sync_connection_names_its_document_and_connection():
    """Within a task bound to a connection every line names both; outside it, none."""
    handler = logging.StreamHandler()
    handler.addFilter(ConnectionFilter())
    formatter = TextFormatter()

    def line(message: str) -> str:
        record = logging.LogRecord("modi_sync.sync", logging.INFO, __file__, 1, message, (),
                                   None)
        handler.filter(record)
        return formatter.format(record)

    async def in_a_connection() -> str:
        bind_connection("u1/gym", "abc123")
        return line("closing a connection")

    assert asyncio.run(in_a_connection()).endswith("closing a connection doc=u1/gym conn=abc123")
    assert line("not in one").endswith("not in one")  # the binding stayed in its task
