"""A drop answered by ``sendergate serve`` is not lost when the process is killed before
the database has it: the next start replays the quarantine journal (gateway.journal).

The window between the answer and the commit is normally a few milliseconds; the test
holds SQLite's write lock from outside to keep it open, answers drops through it, kills
the gateway with SIGKILL, and checks that the restarted gateway lists every drop."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from gateway.journal import SUFFIX, journal_dir, read_segment
from tests import providers_support as ps
from tests.redis_support import free_port
from tests.reliability.support import (
    TWIML,
    EventFactory,
    ServeProcess,
    events_with_outcome,
    gateway_config,
)
from tests.servers import RecordingApp, Reply, UvicornThread


def stored_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM events")}


def test_drops_answered_before_a_kill_9_are_replayed_at_the_next_start(tmp_path: Path) -> None:
    app = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})
    keys = ps.Ed25519Keys()
    db = tmp_path / "sg.db"
    factory = EventFactory(keys, 20261127)
    drops = [factory.make(kind, allowed=False) for kind in ("twilio-voice", "mailgun") * 3]
    with UvicornThread(app) as downstream:
        port = free_port()
        config = tmp_path / "config.toml"
        config.write_text(
            gateway_config(
                port=port,
                store_url=f"sqlite:///{db}",
                app_url=downstream.url,
                telnyx_public_key=keys.public_b64,
            )
        )
        first = ServeProcess("first", config, port, tmp_path / "first.log")
        first.start()
        try:
            first.wait_ready()
            locker = sqlite3.connect(db, isolation_level=None)
            locker.execute("BEGIN IMMEDIATE")  # no write reaches the database now
            try:
                for event in drops:
                    answer = httpx.post(
                        first.url + event.path,
                        headers=event.headers,
                        content=event.body,
                        timeout=30,
                    )
                    assert answer.status_code == event.final_status, answer.text
                    assert event.final_body in answer.content
                journaled = {
                    r.id
                    for segment in journal_dir(db).glob("*" + SUFFIX)
                    for r in read_segment(segment.read_bytes())[0]
                }
                assert journaled == {e.eid for e in drops}
                first.kill()
            finally:
                locker.rollback()
                locker.close()
        finally:
            first.stop()
        assert not stored_ids(db) & {e.eid for e in drops}  # only the journal has them
        assert app.requests == []  # nothing was forwarded, before or after

        second = ServeProcess("second", config, port, tmp_path / "second.log")
        second.start()
        try:
            second.wait_ready()
            quarantined = {e["id"] for e in events_with_outcome(second.url, "quarantined")}
            assert quarantined == {e.eid for e in drops}
            [own] = journal_dir(db).glob("*" + SUFFIX)  # the dead segment is gone
            assert own.read_bytes() == b""
            assert "replayed 6 quarantine records" in second.text()
        finally:
            second.stop()
        assert app.requests == []
