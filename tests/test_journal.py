"""The quarantine journal (``gateway.journal``) and the recorder on top of it: a drop is
durable once one append returns, moves into the store in the background, and what a
process left behind is replayed by the next one."""

from __future__ import annotations

import asyncio
import enum
import marshal
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest

from gateway import journal as jn
from gateway.journal import Journal, replay
from gateway.recorder import Recorder
from gateway.store import Store
from gateway.store.base import EventRecord
from gateway.store.sqlite import SQLiteStore
from tests.apptools import make_settings, running
from tests.records import event_record
from tests.test_recorder import CountingStore


def opened(directory: Path) -> Journal:
    """A journal in ``directory``, open (its segment created and locked)."""
    journal = Journal(directory)
    journal.open()
    return journal


def drop(event_id: str, **changes: object) -> EventRecord:
    fields: dict[str, Any] = {
        "verdict": "drop",
        "outcome": "quarantined",
        "rule": 7,
        "reason": "rule",
        **changes,
    }
    return event_record(event_id, **fields)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + jn.SUFFIX))


def lines(path: Path) -> int:
    """How many records the segment at ``path`` holds."""
    records, bad = jn.read_segment(path.read_bytes())
    assert bad == 0
    return len(records)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "gw.db"), busy_timeout=0.1)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --- one record, one line ------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        drop("plain"),
        drop(
            "everything",
            body=b"\x00\xff\n binary, not UTF-8",
            headers=(("x-dup", "1"), ("X-Dup", "2"), ("x-caf\u00e9", "\u2603")),
            envelope_sender="bounce@example.org",
            forward_url="http://127.0.0.1:9/app",
            forward_status=200,
            response_status=200,
            response_content_type="text/xml",
            response_body=b"<Response/>\n",
            extra={"auth": {"dkim": "pass", "spf": None}, "n\u00e4me": [1, 2.5, True]},
            received_at=datetime(2026, 3, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            provider_event_id=None,
        ),
        drop("empty-body", body=b"", response_body=b""),
    ],
    ids=lambda r: r.id,
)
def test_a_record_survives_its_frame(record: EventRecord) -> None:
    frame = jn.encode(record)
    assert frame.startswith(jn.MAGIC)
    [back], bad = jn.read_segment(frame)
    assert (back, bad) == (record, 0)


def test_the_frame_format_names_every_field_of_a_record() -> None:
    """A field added to EventRecord must be added to the journal's format too (with a
    new FORMAT, and a way to read the old one): replay after an upgrade reads frames
    that the previous version wrote."""
    assert tuple(f.name for f in fields(EventRecord)) == jn._V1_FIELDS


@pytest.mark.parametrize("cut", [5, 57, -1])
def test_a_torn_last_frame_is_skipped_and_counted(cut: int) -> None:
    data = jn.encode(drop("a")) + jn.encode(drop("b")) + jn.encode(drop("c"))[:cut]
    records, bad = jn.read_segment(data)
    assert [r.id for r in records] == ["a", "b"]
    assert bad == 1


def test_a_frame_with_a_wrong_checksum_is_skipped_and_the_next_one_read() -> None:
    damaged = bytearray(jn.encode(drop("b")))
    damaged[-3] ^= 0xFF
    records, bad = jn.read_segment(jn.encode(drop("a")) + bytes(damaged) + jn.encode(drop("c")))
    assert [r.id for r in records] == ["a", "c"]
    assert bad == 1


def test_after_garbage_nothing_is_trusted() -> None:
    records, bad = jn.read_segment(jn.encode(drop("a")) + b"garbage that is no frame at all")
    assert [r.id for r in records] == ["a"]
    assert bad == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"not marshal",
        marshal.dumps([1, 2]),
        marshal.dumps((99, "x")),
        marshal.dumps((jn.FORMAT, "too", "short")),
    ],
)
def test_what_is_not_a_record_is_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        jn.decode(payload)


# --- this process's segments -----------------------------------------------------------------


def test_an_append_is_in_the_file_and_a_full_commit_empties_it(tmp_path: Path) -> None:
    journal = opened(tmp_path / "j")
    [segment] = segments(tmp_path / "j")
    journal.append([drop("a"), drop("b")])
    journal.append([drop("c")])
    assert [r.id for r in jn.read_segment(segment.read_bytes())[0]] == ["a", "b", "c"]
    journal.committed(2)  # "c" is still only here
    assert lines(segment) == 3
    journal.committed(1)
    assert segment.read_bytes() == b""
    journal.append([drop("d")])  # appends start again at the front
    assert [r.id for r in jn.read_segment(segment.read_bytes())[0]] == ["d"]
    journal.committed(1)
    journal.close()
    assert segments(tmp_path / "j") == []


def test_a_full_segment_is_sealed_and_deleted_once_the_store_has_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=1)  # every append after the first rotates
    journal.open()
    for name in "abc":
        journal.append([drop(name)])
    files = segments(tmp_path / "j")
    assert len(files) == 3 and sum(lines(f) for f in files) == 3
    journal.committed(1)  # "a": its segment goes
    assert len(segments(tmp_path / "j")) == 2
    journal.committed(2)
    [current] = segments(tmp_path / "j")
    assert current.read_bytes() == b""


def test_close_keeps_what_the_store_does_not_have(tmp_path: Path) -> None:
    journal = opened(tmp_path / "j")
    journal.append([drop("a"), drop("b")])
    journal.committed(1)
    journal.close()
    [left] = segments(tmp_path / "j")
    assert [r.id for r in jn.read_segment(left.read_bytes())[0]] == ["a", "b"]


# --- recovery --------------------------------------------------------------------------------


def test_recovery_takes_dead_segments_and_leaves_live_ones(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    live = Journal(directory)  # a running worker: its segments stay locked
    live.open()
    live.append([drop("live")])
    directory.joinpath(f"4242-dead{jn.SUFFIX}").write_bytes(
        jn.encode(drop("x")) + jn.encode(drop("y"))
    )
    directory.joinpath(".4243-never-renamed.tmp").write_bytes(b"")
    directory.joinpath("notes.txt").write_text("not a segment")

    starting = Journal(directory)
    starting.open()
    [found] = starting.recover()
    assert found.path.name == f"4242-dead{jn.SUFFIX}"
    assert [r.id for r in found.records] == ["x", "y"] and found.unreadable == 0
    assert not directory.joinpath(".4243-never-renamed.tmp").exists()
    assert starting.recover() == []  # held by the first recovery until discarded
    Journal.discard(found)
    assert not found.path.exists()
    assert directory.joinpath("notes.txt").exists()
    live_ids = [r.id for f in segments(directory) for r in jn.read_segment(f.read_bytes())[0]]
    assert live_ids == ["live"]


async def test_replay_writes_dead_segments_to_the_store(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    directory = tmp_path / "j"
    directory.mkdir()
    directory.joinpath(f"1-a{jn.SUFFIX}").write_bytes(
        jn.encode(drop("r1")) + jn.encode(drop("r2")) + jn.encode(drop("r9"))[:20]
    )
    directory.joinpath(f"2-b{jn.SUFFIX}").write_bytes(jn.encode(drop("r3")))
    journal = Journal(directory)
    journal.open()
    assert await replay(journal, sqlite_store, batch=1) == 3
    for event_id in ("r1", "r2", "r3"):
        assert await sqlite_store.get_event(event_id) == drop(event_id)
    assert len(segments(directory)) == 1  # the replaying process's own


async def test_replay_keeps_a_segment_the_store_does_not_take(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    directory = tmp_path / "j"
    directory.mkdir()
    dead = directory / f"1-a{jn.SUFFIX}"
    dead.write_bytes(jn.encode(drop("r1")))
    journal = Journal(directory)
    journal.open()
    counting = CountingStore(sqlite_store)
    counting.outage = True
    assert await replay(journal, cast(Store, counting)) == 0
    assert dead.exists()
    counting.outage = False
    assert await replay(journal, cast(Store, counting)) == 1
    assert not dead.exists()
    assert await sqlite_store.get_event("r1") is not None


async def test_replay_does_not_undo_a_release(tmp_path: Path, sqlite_store: SQLiteStore) -> None:
    """A segment can hold a drop that reached the store and was released since: the
    replayed quarantine record must not put it back in quarantine."""
    released = drop("r1", outcome="released", response_status=200, response_body=b"ok")
    await sqlite_store.put_events([released])
    directory = tmp_path / "j"
    directory.mkdir()
    directory.joinpath(f"1-a{jn.SUFFIX}").write_bytes(jn.encode(drop("r1")))
    journal = Journal(directory)
    journal.open()
    await replay(journal, sqlite_store)
    assert await sqlite_store.get_event("r1") == released


# --- the recorder on a journal ---------------------------------------------------------------


async def test_a_drop_is_answered_while_the_database_is_locked(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    """Another process holds SQLite's write lock: write_now returns once the record is
    in the journal, and the record reaches the store when the lock is gone."""
    journal = Journal(tmp_path / "gw.db.quarantine")
    journal.open()
    recorder = Recorder(sqlite_store, journal=journal, flush_interval_s=0.02)
    locker = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        await asyncio.wait_for(recorder.write_now([drop("d1")]), 5)
        [segment] = segments(tmp_path / "gw.db.quarantine")
        assert [r.id for r in jn.read_segment(segment.read_bytes())[0]] == ["d1"]
        async with asyncio.timeout(10):  # the background writer meets the lock (busy 0.1 s)
            while not recorder.deferring:  # noqa: ASYNC110 (a flag set by another task)
                await asyncio.sleep(0.02)
        assert recorder.journaled == 1
        assert await sqlite_store.get_event("d1") is None
    finally:
        locker.rollback()
        locker.close()
    await recorder.settle(5)
    assert await sqlite_store.get_event("d1") == drop("d1")
    assert recorder.journaled == 0 and not recorder.deferring
    assert segment.read_bytes() == b""
    await recorder.close_journal()
    assert segments(tmp_path / "gw.db.quarantine") == []


async def test_drops_of_one_loop_turn_share_a_write_and_a_transaction(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    """Drops handled in the same turn of the event loop are journaled by one write; the
    ones that arrive while a transaction is in flight go together in the next."""
    counting = CountingStore(sqlite_store, delay_s=0.05)
    journal = opened(tmp_path / "j")
    recorder = Recorder(cast(Store, counting), journal=journal, journal_linger_s=0)
    writes = 0
    append = journal.append

    def counted(events: Sequence[EventRecord]) -> None:
        nonlocal writes
        writes += 1
        append(events)

    journal.append = counted  # type: ignore[method-assign]
    await asyncio.gather(*(recorder.write_now([drop(f"a{n}")]) for n in range(5)))
    assert writes == 1
    await asyncio.sleep(0.01)  # the first transaction is in flight (50 ms)
    await asyncio.gather(*(recorder.write_now([drop(f"b{n}")]) for n in range(5)))
    assert writes == 2
    await recorder.settle(5)
    assert counting.batches == [[f"a{n}" for n in range(5)], [f"b{n}" for n in range(5)]]
    await recorder.close_journal()


async def test_drops_of_separate_turns_gather_into_one_transaction_by_default(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    """Nobody waits for the journal's transactions, so by default the writer lets them
    gather: drops answered one at a time over 30 ms reach the store in one transaction
    (two if the machine stalls this test for over 70 ms), where a writer lingering
    10 ms would commit three (fewer, larger transactions: less CPU and WAL per drop)."""
    counting = CountingStore(sqlite_store)
    journal = opened(tmp_path / "j")
    recorder = Recorder(cast(Store, counting), journal=journal)
    for n in range(10):
        await recorder.write_now([drop(f"t{n}")])  # answered once journaled
        await asyncio.sleep(0.003)
    await recorder.settle(5)
    assert len(counting.batches) <= 2
    assert [i for batch in counting.batches for i in batch] == [f"t{n}" for n in range(10)]
    await recorder.close_journal()


async def test_drops_wait_for_the_store_once_the_journal_backlog_is_full(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    """A drop is answered once journaled, but not while ``backlog`` journaled records
    wait for the store: then it waits for the writer's next commit, so that a store
    thread starved by a saturated event loop cannot fall behind without bound."""
    counting = CountingStore(sqlite_store)
    counting.gate = asyncio.Event()
    journal = opened(tmp_path / "j")
    recorder = Recorder(cast(Store, counting), journal=journal, journal_linger_s=0, backlog=3)
    for n in range(3):
        await asyncio.wait_for(recorder.write_now([drop(f"q{n}")]), 5)
    late = asyncio.create_task(recorder.write_now([drop("q3")]))
    await asyncio.sleep(0.1)
    assert not late.done()
    assert recorder.journaled == 3
    counting.gate.set()
    await asyncio.wait_for(late, 5)
    await recorder.settle(5)
    for n in range(4):
        assert await sqlite_store.get_event(f"q{n}") == drop(f"q{n}")
    await recorder.close_journal()


async def test_during_an_outage_drops_past_the_backlog_are_journaled(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    """With the store unreachable the journal keeps the drops answered (fail-static):
    past the backlog they go on into the journal once the writer has met the outage."""
    counting = CountingStore(sqlite_store)
    counting.outage = True
    journal = opened(tmp_path / "j")
    recorder = Recorder(cast(Store, counting), journal=journal, journal_linger_s=0, backlog=2)
    for n in range(5):
        await asyncio.wait_for(recorder.write_now([drop(f"o{n}")]), 5)
    assert recorder.deferring and recorder.journaled == 5
    counting.outage = False
    await recorder.settle(5)
    assert recorder.journaled == 0
    await recorder.close_journal()


async def test_an_admin_read_does_not_wait_out_the_writers_linger(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    """settle() (what the admin API's event reads call first) has the writer commit what
    it gathered at once: with a 60 s linger the drop is in the store well within the
    5 s that settle waits."""
    journal = opened(tmp_path / "j")
    recorder = Recorder(sqlite_store, journal=journal, journal_linger_s=60)
    await recorder.write_now([drop("s1")])
    await recorder.settle(5)
    assert await sqlite_store.get_event("s1") == drop("s1")
    assert recorder.journaled == 0
    await recorder.close_journal()


async def test_a_record_the_store_refuses_does_not_hold_up_the_others(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    counting = CountingStore(sqlite_store)
    counting.poison = {"bad"}
    journal = opened(tmp_path / "j")
    recorder = Recorder(cast(Store, counting), journal=journal)
    await recorder.write_now([drop("ok1"), drop("bad"), drop("ok2")])
    await recorder.settle(5)
    assert await sqlite_store.get_event("ok1") is not None
    assert await sqlite_store.get_event("ok2") is not None
    assert recorder.journaled == 0
    await recorder.close_journal()


async def test_without_a_writable_journal_the_drop_waits_for_the_store(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    journal = opened(tmp_path / "j")
    recorder = Recorder(sqlite_store, journal=journal)
    journal.close()  # appends fail from here on, as on a full disk
    await recorder.write_now([drop("d1")])
    assert recorder.journaled == 0
    assert await sqlite_store.get_event("d1") == drop("d1")  # committed before it returned


async def test_shutdown_in_an_outage_leaves_the_journal_for_the_next_start(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    counting = CountingStore(sqlite_store)
    counting.outage = True
    directory = tmp_path / "j"
    first = Journal(directory)
    first.open()
    recorder = Recorder(cast(Store, counting), journal=first, flush_interval_s=0.01)
    await recorder.write_now([drop("d1"), drop("d2")])
    await asyncio.sleep(0.05)
    await recorder.close_journal()
    assert len(segments(directory)) == 1

    second = Journal(directory)
    second.open()
    assert await replay(second, sqlite_store) == 2
    assert await sqlite_store.get_event("d2") == drop("d2")
    second.close()
    assert segments(directory) == []


def test_the_journal_sits_beside_the_database() -> None:
    assert jn.journal_dir("/var/lib/sendergate/gw.db") == Path(
        "/var/lib/sendergate/gw.db.quarantine"
    )


# --- the app's wiring ------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_the_app_keeps_a_journal_beside_a_sqlite_store_unless_turned_off(
    tmp_path: Path, enabled: bool
) -> None:
    settings = make_settings(tmp_path)
    settings = replace(settings, store=replace(settings.store, quarantine_journal=enabled))
    directory = jn.journal_dir(tmp_path / "gw.db")
    with running(settings) as client:
        assert client.get("/readyz").json()["checks"]["recorder"]["journaled"] == 0
        assert len(segments(directory)) == (1 if enabled else 0)
    assert segments(directory) == []  # a clean stop leaves nothing to replay


class Kind(enum.StrEnum):
    PASS = "pass"


def test_a_str_subclass_is_kept_as_its_plain_value() -> None:
    """marshal refuses an enum member where JSON (and so the store) keeps its value."""
    record = drop("enum", extra={"dkim": Kind.PASS, "n": [Kind.PASS]}, reason=Kind.PASS)
    [back], bad = jn.read_segment(jn.encode(record))
    assert bad == 0
    assert back.extra == {"dkim": "pass", "n": ["pass"]} and back.reason == "pass"
    assert type(back.reason) is str


async def test_a_record_the_journal_cannot_take_goes_to_the_store(
    tmp_path: Path, sqlite_store: SQLiteStore
) -> None:
    journal = opened(tmp_path / "j")
    recorder = Recorder(sqlite_store, journal=journal)
    odd = drop("odd", extra={"at": object()})  # neither marshal nor JSON takes it
    fine = drop("fine")
    results = await asyncio.gather(
        recorder.write_now([odd]), recorder.write_now([fine]), return_exceptions=True
    )
    assert isinstance(results[0], TypeError)  # the store refused it too: its caller hears
    assert results[1] is None
    assert await sqlite_store.get_event("fine") == fine
    assert await sqlite_store.get_event("odd") is None
    await recorder.close_journal()
