"""Structured logging: one JSON object per line, written off the event loop.

``setup_logging()`` puts a ``QueueHandler`` on the root logger and a ``QueueListener``
thread that formats and writes, so a slow stderr (a pipe to a log shipper) never stalls
the event loop. ``event_log`` writes the one line per webhook event (logger
``sendergate.event``); secrets and bodies are never passed to it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO

EVENT_LOGGER = "sendergate.event"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False, default=str)


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None
) -> logging.handlers.QueueListener:
    """Route every log record through a queue to a JSON writer thread; return the
    listener (call ``stop()`` at exit to flush)."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(JsonFormatter())
    listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    listener.start()
    return listener


def event_log(fields: dict[str, Any]) -> None:
    """The one structured line for a decided webhook event."""
    logger = logging.getLogger(EVENT_LOGGER)
    if logger.isEnabledFor(logging.INFO):
        logger.info("event", extra={"fields": fields})
