"""``sendergate serve`` as operators run it: JSON log lines, ``/metrics`` over several
workers, and a graceful stop on SIGTERM.

* ``--workers 2``: signed webhooks are spread over both workers (each worker's own
  counts are read from its file in the metrics directory), and every scrape, whichever
  worker answers it, shows the total of both, and the quarantine size once (not once per
  worker). At exit the directory is removed.
* SIGTERM while a webhook waits on a slow application: new connections are refused at
  once, the webhook still gets the application's answer, the event is in the store
  when the process has exited, and the log's last lines are there.
* ``--graceful-timeout`` bounds that wait: an application slower than it does not hold
  the stop up.
* Every output line is JSON; no secret and no body is ever written.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gateway.store.sqlite import SQLiteStore
from tests import providers_support as ps
from tests.redis_support import free_port
from tests.reliability.support import (
    SECRETS,
    TWIML,
    Event,
    EventFactory,
    ServeProcess,
    gateway_config,
    wait_for,
)
from tests.servers import RecordingApp, Reply, UvicornThread

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SMS_TEXT = "hello & welcome"  # the body of every Twilio SMS (ps.twilio_sms_params)


class Setup:
    def __init__(self, tmp: Path, app: RecordingApp, *, forward_timeout_s: float = 3.0) -> None:
        self.app = app
        self.downstream = UvicornThread(app)
        self.keys = ps.Ed25519Keys()
        self.db = tmp / "sg.db"
        self.port = free_port()
        self.config = tmp / "config.toml"
        self.config.write_text(
            gateway_config(
                port=self.port,
                store_url=f"sqlite:///{self.db}",
                app_url=self.downstream.url,
                telnyx_public_key=self.keys.public_b64,
                forward_timeout_s=forward_timeout_s,
            )
        )
        self.log = tmp / "serve.log"
        self.factory = EventFactory(self.keys, seed=11)

    def serve(self, *args: str) -> ServeProcess:
        return ServeProcess("gateway", self.config, self.port, self.log, args)


@pytest.fixture
def twilio_app() -> Iterator[RecordingApp]:
    yield RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})


def post(url: str, event: Event, **kw: Any) -> httpx.Response:
    return httpx.post(url + event.path, headers=event.headers, content=event.body, **kw)


def check_log(serve: ServeProcess, events: list[Event]) -> list[dict[str, Any]]:
    """Every line JSON, one event line per event (with its id), no secret, no body."""
    lines = serve.log_lines()
    assert not [x for x in lines if "raw" in x], [x for x in lines if "raw" in x][:5]
    text = serve.text()
    for secret in SECRETS:
        assert secret not in text
    assert SMS_TEXT not in text and "hello+%26+welcome" not in text
    assert "Traceback" not in text
    logged = [x for x in lines if x.get("logger") == "sendergate.event"]
    assert sorted(x["event"] for x in logged) == sorted(e.eid for e in events)
    for line in logged:
        assert {"ts", "level", "source", "channel", "sender", "target", "verdict"} <= set(line)
        assert {"rule", "reason", "outcome", "forward_status", "forward_ms"} <= set(line)
        assert "body" not in line and "headers" not in line
    return lines


# --- several workers, one /metrics ----------------------------------------------------------


def _scrape(url: str) -> dict[str, float]:
    """``name{labels}`` → value, over a new connection (any worker may answer)."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def _total(scrape: dict[str, float], name: str) -> float:
    return sum(v for k, v in scrape.items() if k.startswith(name + "{"))


def _per_worker_events(directory: Path) -> dict[int, float]:
    """Each worker's own count of decided events, from its counter file."""
    out: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.partition("_")[2])
        families = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        out[pid] = sum(
            s.value
            for f in families
            if f.name == "sendergate_events"
            for s in f.samples
            if s.name == "sendergate_events_total"
        )
    return out


async def _send_all(url: str, events: list[Event], concurrency: int = 8) -> list[int]:
    """Each on a new connection, so that the kernel hands them to either worker."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:

        async def one(event: Event) -> int:
            async with gate:
                r = await client.post(url + event.path, headers=event.headers, content=event.body)
                return r.status_code

        return list(await asyncio.gather(*(one(e) for e in events)))


def test_metrics_of_two_workers_add_up_in_every_scrape(
    tmp_path: Path, twilio_app: RecordingApp
) -> None:
    setup = Setup(tmp_path, twilio_app)
    serve = setup.serve("--workers", "2")
    setup.downstream.start()
    serve.start()
    try:
        serve.wait_ready()

        def started() -> int:
            lines = serve.log_lines()
            return sum(
                str(x.get("msg", "")).startswith("Application startup complete") for x in lines
            )

        wait_for(lambda: started() == 2, "both workers started", 30)  # /readyz: either one
        found = [
            m[1]
            for line in serve.log_lines()
            if (m := re.search(r"metrics aggregated in (\S+)", str(line.get("msg", ""))))
        ]
        directory = Path(found[0])
        assert directory.is_dir()
        sent: list[Event] = []
        per_worker: dict[int, float] = {}
        for _ in range(5):  # until both workers have decided some (the kernel chooses)
            batch = [
                setup.factory.make(kind, allowed=i % 3 != 0)
                for i, kind in enumerate(["twilio-voice", "twilio-sms"] * 20)
            ]
            statuses = asyncio.run(_send_all(serve.url, batch))
            assert statuses == [200] * len(batch)
            sent += batch
            per_worker = _per_worker_events(directory)
            if len([n for n in per_worker.values() if n > 0]) >= 2:
                break
            time.sleep(0.2)
        busy = {pid: n for pid, n in per_worker.items() if n > 0}
        assert len(busy) == 2, per_worker
        assert sum(busy.values()) == len(sent)

        allowed = sum(e.allowed for e in sent)
        # Each worker recounts the quarantine in the store every 5 s; the scrape shows the
        # freshest count, not the sum of the workers' counts.
        held = len(sent) - allowed
        wait_for(
            lambda: _scrape(serve.url).get("sendergate_quarantine_events{}") == held,
            "the quarantine gauge counts the drops",
            15,
        )
        for _ in range(8):  # whichever worker answers, the totals are both workers'
            scrape = _scrape(serve.url)
            assert _total(scrape, "sendergate_events_total") == len(sent)
            assert _total(scrape, "sendergate_quarantined_total") == len(sent) - allowed
            assert _total(scrape, "sendergate_forward_seconds_count") == allowed
            assert scrape["sendergate_snapshot_rules{}"] == 2  # the two org block rules
            assert "sendergate_snapshot_age_seconds{}" in scrape
            assert scrape["sendergate_buffered_items{}"] >= 0
            assert scrape["sendergate_quarantine_events{}"] == held
        delivered = {r.header("x-sendergate-event-id") for r in twilio_app.requests}
        assert delivered == {e.eid for e in sent if e.allowed}
    finally:
        status = serve.terminate()
        setup.downstream.stop()
    assert status in (0, -signal.SIGTERM), serve.tail()
    assert not directory.exists()  # removed at exit
    lines = check_log(serve, sent)
    pids = {x["msg"] for x in lines if str(x.get("msg", "")).startswith("Started server process")}
    assert len(pids) == 2  # both workers log through the same JSON writer


# --- graceful shutdown ----------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_sigterm_lets_an_in_flight_webhook_finish_and_records_it(tmp_path: Path) -> None:
    """The application takes 1.5 s; SIGTERM arrives while the gateway waits for it."""
    slow = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML, delay_s=1.5)})
    setup = Setup(tmp_path, slow)
    serve = setup.serve("--graceful-timeout", "10")
    setup.downstream.start()
    serve.start()
    answers: list[httpx.Response | BaseException] = []
    event = setup.factory.make("twilio-voice", allowed=True)
    try:
        serve.wait_ready()
        sender = threading.Thread(target=lambda: answers.append(post(serve.url, event, timeout=20)))
        sender.start()
        slow.wait_for_sync(1, timeout_s=10)  # forwarded: the gateway waits on the app
        assert serve.proc is not None
        serve.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        wait_for(lambda: _refused(setup.port), "new connections refused", 2.0)
        assert not answers  # still in flight when the listening socket closed
        sender.join(20)
        status = serve.terminate()
        took = time.monotonic() - signalled
    finally:
        serve.stop()
        setup.downstream.stop()
    assert status in (0, -signal.SIGTERM), serve.tail()
    answer = answers[0]
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200 and answer.content == TWIML  # the app's own answer
    assert took < 10, took

    async def stored() -> Any:
        store = SQLiteStore(str(setup.db))
        await store.open()
        try:
            return await store.get_event(event.eid)
        finally:
            await store.close()

    record = asyncio.run(stored())  # recorded before the process exited
    assert record is not None
    assert record.outcome == "forwarded" and record.response_status == 200
    lines = check_log(serve, [event])
    messages = [str(x.get("msg", "")) for x in lines]
    assert any(m.startswith("Application shutdown complete") for m in messages)
    assert messages[-1].startswith("Finished server process")  # nothing lost at the end


def test_graceful_timeout_bounds_how_long_a_stop_waits(tmp_path: Path) -> None:
    """An application slower than --graceful-timeout: the stop does not wait for it; the
    provider hears no answer and will retry (at-least-once, docs/operations.md)."""
    slower = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML, delay_s=6)})
    setup = Setup(tmp_path, slower, forward_timeout_s=10)
    serve = setup.serve("--graceful-timeout", "1")
    setup.downstream.start()
    serve.start()
    answers: list[Any] = []
    event = setup.factory.make("twilio-voice", allowed=True)

    def send() -> None:
        try:
            answers.append(post(serve.url, event, timeout=20))
        except httpx.TransportError as exc:
            answers.append(exc)

    try:
        serve.wait_ready()
        sender = threading.Thread(target=send)
        sender.start()
        slower.wait_for_sync(1, timeout_s=10)
        assert serve.proc is not None
        serve.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        status = serve.terminate(timeout_s=8)
        took = time.monotonic() - signalled
        sender.join(10)
    finally:
        serve.stop()
        setup.downstream.stop()
    assert status in (0, -signal.SIGTERM), serve.tail()
    assert took < 4.5, took  # 1 s of grace and the shutdown, not the app's 6 s
    answer = answers[0]
    assert isinstance(answer, httpx.TransportError) or answer.status_code >= 500, answer
    text = serve.text()
    assert "timeout graceful shutdown exceeded" in text
    assert json.loads(text.splitlines()[-1])["msg"].startswith("Finished server process")
