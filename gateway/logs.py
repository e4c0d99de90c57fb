"""Structured logging: one JSON object per line, written off the event loop.

``setup_logging()`` puts a handler on the root logger that appends each record to an
in-memory buffer, and a writer thread formats and writes them in batches, so a slow
stderr (a pipe to a log shipper) never stalls the event loop. uvicorn's own loggers
(``uvicorn.error``, ``uvicorn.access``) go through the same buffer. ``stop()`` on the
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

import collections
import contextlib
import json
import logging
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


class _Enqueue(logging.Handler):
    """Appends the record as it is to the writer's buffer: formatting (and
    ``getMessage``) happens on the writer thread, not on the event loop."""

    def __init__(self, writer: JsonLogListener) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        self._writer.put(record)

    def handle(self, record: logging.LogRecord) -> bool:  # no per-record handler lock
        self.emit(record)
        return True


class JsonLogListener:
    """The writer thread: takes what the event loop appended, formats it, and writes it
    in one ``write`` per batch.

    Why not ``logging.handlers.QueueListener``: it wakes its thread for every record, and
    on a loaded 2-core host that wake-up (a GIL hand-over and a context switch per line)
    cost as much as the rest of a dropped event (docs/performance.md). Here the event loop
    only appends to a ``deque`` (atomic under the GIL) and sets an ``Event`` when the
    writer is waiting for work; after a write the writer sleeps ``batch_s`` so that what
    arrives meanwhile goes out in the next batch. A line waits at most about ``batch_s``.

    Should the stream stall (a blocked pipe), at most ``max_pending`` lines wait; beyond
    that new ones are counted and dropped, and a line says how many, rather than the
    process growing without bound.

    ``stop()`` writes what is queued, then replaces the root logger's queue handler with
    a direct writer, so that records logged after it (the last lines of a shutdown) are
    written at once instead of waiting in a buffer that no thread reads. Idempotent."""

    def __init__(
        self,
        stream: TextIO,
        *,
        batch_s: float = 0.02,
        max_pending: int = 100_000,
    ) -> None:
        self._stream = stream
        self._formatter = JsonFormatter()
        self._batch_s = batch_s
        self._max_pending = max_pending
        self._pending: collections.deque[logging.LogRecord | _EventLine] = collections.deque()
        self._work = threading.Event()
        self._lock = threading.Lock()  # stop() against stop()
        self._write_lock = threading.Lock()  # the thread's last batch against stop()'s
        self._stopped = False
        self._dropped = 0
        self._thread: threading.Thread | None = None
        self.enqueue = _Enqueue(self)
        self.direct = logging.StreamHandler(stream)
        self.direct.setFormatter(self._formatter)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sendergate-log", daemon=True)
        self._thread.start()

    def put(self, item: logging.LogRecord | _EventLine) -> None:
        pending = self._pending
        if len(pending) >= self._max_pending:
            self._dropped += 1
            return
        pending.append(item)
        if not self._work.is_set():
            self._work.set()

    def _run(self) -> None:
        while not self._stopped:
            self._work.wait()
            self._work.clear()
            self._write_pending()
            if not self._stopped:
                time.sleep(self._batch_s)

    def _write_pending(self) -> None:
        pending = self._pending
        lines: list[str] = []
        while pending:
            item = pending.popleft()
            try:
                if isinstance(item, _EventLine):
                    lines.append(item.format())
                else:
                    lines.append(self._formatter.format(item))
            except Exception as exc:  # a bad record must not stop the writer
                lines.append(_internal_line(f"log record could not be formatted: {exc!r}"))
        dropped, self._dropped = self._dropped, 0
        if dropped:
            lines.append(_internal_line(f"{dropped} log lines dropped: the log stream stalled"))
        if not lines:
            return
        lines.append("")
        with self._write_lock:
            try:
                self._stream.write("\n".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # closed or broken stream: nothing to tell
                pass

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            global _listener
            if _listener is self:
                _listener = None  # event_log goes through logging (the direct writer)
            root = logging.getLogger()
            root.addHandler(self.direct)  # from now on, written directly
            root.removeHandler(self.enqueue)
        self._work.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._write_pending()  # what arrived before the swap
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


class _EventLine:
    """An event's log line, kept as its fields until the writer thread formats it: no
    ``LogRecord`` (caller lookup, thread and process names) on the event loop."""

    __slots__ = ("created", "fields")

    def __init__(self, created: float, fields: dict[str, Any]) -> None:
        self.created = created
        self.fields = fields

    def format(self) -> str:
        out: dict[str, Any] = {"ts": _timestamp(self.created), "level": "info"}
        out["logger"] = EVENT_LOGGER
        out.update(self.fields)
        return _LINE_ENCODER.encode(out)


# One encoder for every line: json.dumps with arguments builds a new one per call.
_LINE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)

# The seconds part of the last timestamp: lines come in bursts within one second, and
# strftime was a tenth of a line's cost. Read and replaced whole (one tuple), so any
# thread may call _timestamp.
_last_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    global _last_second
    second = int(created)
    cached, text = _last_second
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{int(created % 1 * 1000):03d}Z"


def _internal_line(msg: str) -> str:
    return json.dumps(
        {"ts": _timestamp(time.time()), "level": "warning", "logger": __name__, "msg": msg},
        separators=(",", ":"),
    )


#: The running writer, for ``event_log``'s fast path (None: go through ``logging``).
_listener: JsonLogListener | None = None


def setup_logging(
    level: str = "INFO", stream: TextIO | None = None, *, access_log: bool = False
) -> JsonLogListener:
    """Route every log record to a JSON writer thread, uvicorn's loggers included (run
    uvicorn with ``log_config=None`` so that it adds no handlers of its own);
    ``access_log`` lets ``uvicorn.access`` lines through. Returns the writer: call
    ``stop()`` at exit to write what is queued."""
    global _listener
    listener = JsonLogListener(stream or sys.stderr)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(listener.enqueue)
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
    _listener = listener
    return listener


_event_logger = logging.getLogger(EVENT_LOGGER)


def event_log(fields: dict[str, Any]) -> None:
    """The one structured line for a decided webhook event. With ``setup_logging``'s
    writer running (``sendergate serve``), the fields go straight to it; otherwise (tests,
    embedding) through the ``sendergate.event`` logger and whatever handlers it has."""
    if not _event_logger.isEnabledFor(logging.INFO):
        return
    listener = _listener
    if listener is not None and not _event_logger.handlers:
        listener.put(_EventLine(time.time(), fields))
    else:
        _event_logger.info("event", extra={"fields": fields})
