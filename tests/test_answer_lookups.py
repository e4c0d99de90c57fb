"""Retry-dedupe reads: SQLite answers on the spot from the event loop's read-only
connection; otherwise (Redis, or SQLite when that read cannot be done without waiting)
lookups asked for in one turn of the event loop reach the store as one
``delivered_answers`` call. A real SQLite store underneath."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gateway.errors import StoreUnavailable
from gateway.pipeline import AnswerLookups
from gateway.store.base import EventRecord, StoredAnswer
from gateway.store.sqlite import SQLiteStore
from tests.records import event_record


class CountingStore(SQLiteStore):
    """The real store, recording each ``delivered_answers`` batch it is asked for; its
    on-the-spot read is switched off unless ``nowait`` is set (as for Redis, which has
    none)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []
        self.fail = False
        self.nowait = False

    def delivered_answers_nowait(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer] | None:
        return super().delivered_answers_nowait(event_ids) if self.nowait else None

    async def delivered_answers(self, event_ids: Sequence[str]) -> dict[str, StoredAnswer]:
        self.batches.append(list(event_ids))
        if self.fail:
            raise StoreUnavailable("the store is down (test)")
        return await super().delivered_answers(event_ids)


def _delivered(event_id: str, body: bytes) -> EventRecord:
    return event_record(
        event_id, response_status=200, response_content_type="text/xml", response_body=body
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    s = CountingStore(str(tmp_path / "gw.db"))
    await s.open()
    await s.put_events([_delivered("a", b"<A/>"), _delivered("b", b"<B/>")])
    try:
        yield s
    finally:
        await s.close()


async def test_lookups_of_one_turn_are_one_store_call(store: CountingStore) -> None:
    lookups = AnswerLookups(store)
    found = await asyncio.gather(*(lookups.get(i) for i in ["a", "x", "b", "a"]))
    assert found == [
        StoredAnswer(200, "text/xml", b"<A/>"),
        None,
        StoredAnswer(200, "text/xml", b"<B/>"),
        StoredAnswer(200, "text/xml", b"<A/>"),
    ]
    assert [sorted(b) for b in store.batches] == [["a", "b", "x"]]  # a repeated id once
    assert await lookups.get("b") == StoredAnswer(200, "text/xml", b"<B/>")
    assert len(store.batches) == 2  # a later turn is a new batch


async def test_a_store_error_reaches_every_waiter_of_the_batch(store: CountingStore) -> None:
    lookups = AnswerLookups(store)
    store.fail = True
    results = await asyncio.gather(lookups.get("a"), lookups.get("b"), return_exceptions=True)
    assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable]
    store.fail = False
    assert (await lookups.get("a")) is not None  # the next batch reads again


async def test_a_cancelled_lookup_leaves_the_others_answered(store: CountingStore) -> None:
    lookups = AnswerLookups(store)
    cancelled = asyncio.ensure_future(lookups.get("a"))
    kept = asyncio.ensure_future(lookups.get("b"))
    await asyncio.sleep(0)  # both are waiting on the batch
    cancelled.cancel()
    assert await kept == StoredAnswer(200, "text/xml", b"<B/>")
    assert cancelled.cancelled()


async def test_sqlite_answers_on_the_spot_and_sees_new_writes(store: CountingStore) -> None:
    store.nowait = True
    lookups = AnswerLookups(store)
    assert await lookups.get("a") == StoredAnswer(200, "text/xml", b"<A/>")
    assert await lookups.get("c") is None
    await store.put_events([_delivered("c", b"<C/>")])  # written on the store's thread
    assert await lookups.get("c") == StoredAnswer(200, "text/xml", b"<C/>")
    assert store.batches == []  # no hop to the store's thread


async def test_the_on_the_spot_read_gives_up_rather_than_wait(tmp_path: Path) -> None:
    memory = SQLiteStore(":memory:")
    await memory.open()
    try:
        assert memory.delivered_answers_nowait(["a"]) is None  # no second connection
    finally:
        await memory.close()
    store = SQLiteStore(str(tmp_path / "gw.db"))
    assert store.delivered_answers_nowait(["a"]) is None  # not open
    await store.open()
    await store.put_events([_delivered("a", b"<A/>")])
    assert store.delivered_answers_nowait(["a"]) == {"a": StoredAnswer(200, "text/xml", b"<A/>")}
    await store.close()
    assert store.delivered_answers_nowait(["a"]) is None  # closed: the caller's batch path
