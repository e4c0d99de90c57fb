"""Structured logging: one JSON object per line, written off the event loop.

``setup_logging()`` puts a queue handler on the root logger and a listener thread that
formats and writes, so a slow stderr (a pipe to a log shipper) never stalls the event
loop: the loop only appends the record to an in-memory queue. uvicorn's own loggers
(``uvicorn.error``, ``uvicorn.access``) go through the same queue. ``stop()`` on the
listener it returns writes what is queued and switches to writing directly (so the last
lines of a shutdown are not lost); calling it twice is harmless.

``event_log`` writes the one line per webhook event (logger ``sendergate.event``); secrets
and bodies are never passed to it. As a safety net the formatter also removes
credentials from URLs (``scheme://user:password@host`` becomes ``scheme://***@host``) in
every message, and an access-log line never carries the query string (a GET webhook's
query holds the message and its signature).

Line fields: ``ts`` (UTC, milliseconds), ``level``, ``logger``, then either the event's
fields or ``msg`` (plus ``exc`` with a traceback); access lines have ``client``,
``method``, ``path``, ``http_version`` and ``status``. docs/operations.md lists them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from typing import Any, TextIO

EVENT_LOGGER = "sendergate.event"
_ACCESS_LOGGER = "uvicorn.access"
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")
# scheme://user:password@ or scheme://token@ in a URL: the credentials part.
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it replaced by ``***``."""
    return _URL_CREDENTIALS.sub(r"\1***@", text) if "@" in text else text


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
        elif (
            record.name == _ACCESS_LOGGER
            and isinstance(record.args, tuple)
            and (len(record.args) == 5)
        ):
            # uvicorn: '%s - "%s %s HTTP/%s" %d' % (client, method, path?query, version,
            # status). The query string is left out: it may hold a message and a signature.
            client, method, path, version, status = record.args
            out.update(
                msg="request",
                client=client,
                method=method,
                path=str(path).partition("?")[0],
                http_version=version,
                status=status,
            )
        else:
            out["msg"] = redact(record.getMessage())
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False, default=str)


class _Enqueue(logging.handlers.QueueHandler):
    """Hands the record over as it is: formatting (and ``getMessage``) happens on the
    writer thread, not on the event loop."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class JsonLogListener(logging.handlers.QueueListener):
    """The writer thread. ``stop()`` writes what is queued, then replaces the root
    logger's queue handler with the writer itself, so that records logged after it (the
    last lines of a shutdown) are written at once instead of waiting in a queue that no
    thread reads. Idempotent."""

    def __init__(
        self, records: queue.SimpleQueue[Any], writer: logging.Handler, enqueue: _Enqueue
    ) -> None:
        super().__init__(records, writer, respect_handler_level=False)
        self._writer = writer
        self._enqueue = enqueue
        self._lock = threading.Lock()
        self._stopped = False

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            root = logging.getLogger()
            root.addHandler(self._writer)  # from now on, written directly
            root.removeHandler(self._enqueue)
            if self._thread is not None:
                super().stop()  # writes what was queued before the swap
            self._writer.flush()


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None, *, access_log: bool = False
) -> JsonLogListener:
    """Route every log record through a queue to a JSON writer thread, uvicorn's loggers
    included (run uvicorn with ``log_config=None`` so that it adds no handlers of its
    own); ``access_log`` lets ``uvicorn.access`` lines through. Returns the listener:
    call ``stop()`` at exit to write what is queued."""
    records: queue.SimpleQueue[Any] = queue.SimpleQueue()
    writer = logging.StreamHandler(stream or sys.stderr)
    writer.setFormatter(JsonFormatter())
    enqueue = _Enqueue(records)
    listener = JsonLogListener(records, writer, enqueue)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(enqueue)
    root.setLevel(level.upper())
    for name in _UVICORN_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    access = logging.getLogger(_ACCESS_LOGGER)
    access.handlers.clear()
    # uvicorn decides whether to write access lines by whether this logger has handlers
    # (its own or, propagating, the root's): without access_log it must have none.
    access.propagate = access_log
    listener.start()
    return listener


def event_log(fields: dict[str, Any]) -> None:
    """The one structured line for a decided webhook event."""
    logger = logging.getLogger(EVENT_LOGGER)
    if logger.isEnabledFor(logging.INFO):
        logger.info("event", extra={"fields": fields})
