"""``gateway.logs`` on its own: what a line holds and what it never holds, and that
stopping the writer loses nothing (in-process, fast)."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from gateway.logs import (
    JsonFormatter,
    JsonLogListener,
    _EventLine,
    event_log,
    redact,
    setup_logging,
)

pytestmark = pytest.mark.reliability


def _record(name: str, msg: str, args: object = None, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)  # type: ignore[arg-type]
    record.__dict__.update(extra)
    return record


def test_url_credentials_are_redacted() -> None:
    assert redact("forward to https://user:s3cret@app.example/hook failed") == (
        "forward to https://***@app.example/hook failed"
    )
    assert redact("redis://:pw@10.0.0.1:6379/0 and rediss://tok@h") == (
        "redis://***@10.0.0.1:6379/0 and rediss://***@h"
    )
    assert redact("mail bob@example.com, no URL") == "mail bob@example.com, no URL"
    line = json.loads(
        JsonFormatter().format(_record("x", "to %s", ("http://a:b@h/p",)))  # args too
    )
    assert line["msg"] == "to http://***@h/p" and line["level"] == "info"


def test_access_lines_leave_out_the_query_string() -> None:
    record = _record(
        "uvicorn.access",
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/hooks/vonage?text=secret+message&sig=abc", "1.1", 200),
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["path"] == "/hooks/vonage" and line["status"] == 200
    assert "secret" not in json.dumps(line) and "sig" not in json.dumps(line)


def test_an_exception_is_one_line_with_its_traceback() -> None:
    try:
        raise ValueError("boom at https://u:p@h")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert "ValueError: boom at https://***@h" in line["exc"]


def _pytests(handler: logging.Handler) -> bool:
    """pytest's own capture handlers, which it adds and removes around each phase."""
    return type(handler).__module__.startswith("_pytest")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging changes the root logger: put everything back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    loggers = {
        n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate) for n in names
    }
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0] and not _pytests(handler):
                root.removeHandler(handler)
        for handler in saved[0]:
            if handler not in root.handlers and not _pytests(handler):
                root.addHandler(handler)
        root.setLevel(saved[1])
        for n, (handlers, propagate) in loggers.items():
            logging.getLogger(n).handlers[:] = handlers
            logging.getLogger(n).propagate = propagate


def test_stop_writes_what_is_queued_then_writes_directly(root_logging: None) -> None:
    out = io.StringIO()
    listener = setup_logging("INFO", out, access_log=False)
    assert logging.getLogger("uvicorn.access").propagate is False
    for i in range(200):
        event_log({"event": f"evt_{i}", "verdict": "deliver"})
    log = logging.getLogger("sendergate.serve")  # any logger without a level of its own
    log.info("Shutting down")
    listener.stop()
    listener.stop()  # twice is harmless
    log.info("Finished server process [1]")  # after stop: written at once
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["event"] for x in lines[:200]] == [f"evt_{i}" for i in range(200)]
    assert [x.get("msg") for x in lines[200:]] == ["Shutting down", "Finished server process [1]"]
    assert lines[0]["logger"] == "sendergate.event"


def test_access_log_on_lets_uvicorn_access_through(root_logging: None) -> None:
    out = io.StringIO()
    listener = setup_logging("INFO", out, access_log=True)
    try:
        assert logging.getLogger("uvicorn.access").hasHandlers()
    finally:
        listener.stop()


def test_event_lines_are_written_while_running_without_a_stop(root_logging: None) -> None:
    """The writer batches, but a line does not wait for shutdown to appear."""
    out = io.StringIO()
    listener = setup_logging("INFO", out, access_log=False)
    try:
        event_log({"event": "evt_live", "verdict": "drop", "rule": 7})
        deadline = time.monotonic() + 10
        while "evt_live" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        line = json.loads(out.getvalue().splitlines()[0])
    finally:
        listener.stop()
    assert line["event"] == "evt_live" and line["rule"] == 7
    assert line["logger"] == "sendergate.event" and line["level"] == "info"
    assert line["ts"].endswith("Z")


def test_a_stalled_stream_drops_lines_beyond_the_bound_and_says_so() -> None:
    out = io.StringIO()
    listener = JsonLogListener(out, max_pending=3)  # thread not started: nothing drains
    for i in range(5):
        event_log_record = _record("sendergate.serve", "line %d", (i,))
        listener.put(event_log_record)
    listener.stop()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["msg"] for x in lines[:3]] == ["line 0", "line 1", "line 2"]
    assert lines[3]["level"] == "warning" and "2 log lines dropped" in lines[3]["msg"]


class _Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("broken pipe")


def test_a_broken_stream_does_not_stop_the_writer(root_logging: None) -> None:
    listener = setup_logging("INFO", _Broken(), access_log=False)
    event_log({"event": "evt_lost"})
    logging.getLogger("sendergate.serve").info("still alive")
    listener.stop()  # returns: the writer swallowed the stream's errors


def test_event_line_timestamps_are_right_across_seconds_in_any_order() -> None:
    """The seconds part of a line's timestamp is reused while lines stay in one second:
    a line from another second, earlier or later, still gets its own."""
    base = 1_764_270_000.0
    for created in (base + 0.25, base + 0.9995, base + 1.0, base - 86_400.5, base + 0.5):
        line = json.loads(_EventLine(created, {"event": "e"}).format())
        expected = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        assert line["ts"] == expected[:-3] + "Z"
        assert line["logger"] == "sendergate.event" and line["event"] == "e"
