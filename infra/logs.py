"""Structured JSON log lines, one object per line, as Cloud Logging reads them (`severity`, `message`).

Callers pass fields by name; nothing secret belongs in them: never a download URL, key, token or model bytes.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import IO


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "logger": record.name,
            **getattr(record, "fields", {}),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class StructuredLogger:
    def __init__(self, name: str):
        self._logger = logging.getLogger(name)

    def info(self, message: str, **fields) -> None:
        self._logger.info(message, extra={"fields": fields})

    def warning(self, message: str, **fields) -> None:
        self._logger.warning(message, extra={"fields": fields})


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(name)


def configure(stream: IO[str] | None = None, level: int = logging.INFO) -> logging.Handler:
    """Send the `iml` loggers' lines, as JSON, to `stream` (stderr by default); returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("iml")
    root.handlers = [handler]
    root.setLevel(level)
    root.propagate = False
    return handler
