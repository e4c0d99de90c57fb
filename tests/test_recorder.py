"""The recorder's quarantine writes (``write_now``): group-committed under load, and each
caller returns only once its own events are stored (SPEC §4: quarantine before answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gateway.errors import StoreUnavailable
from gateway.recorder import Recorder
from gateway.store import Store
from gateway.store.base import EventRecord
from tests.records import event_record

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def event(event_id: str) -> EventRecord:
    """A quarantined Twilio call from a blocked caller."""
    return event_record(
        event_id,
        T0,
        source="twilio",
        channel="voice",
        provider_event_id=f"CA{event_id}",
        sender="+14155550666",
        verdict="drop",
        rule=1,
        reason="rule",
        would_drop=True,
        outcome="quarantined",
        path="/hooks/twilio",
        body=b"CallSid=CA1&From=%2B14155550666",
    )


class CountingStore:
    """The store under test, with its ``put_events`` calls counted, slowed (so that
    concurrent writers queue up), held until ``gate`` is set, or failed on demand."""

    def __init__(self, inner: Store, *, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self.outage = False
        self.poison: set[str] = set()
        self.gate: asyncio.Event | None = None

    async def put_events(self, events: Sequence[EventRecord]) -> None:
        self.batches.append([e.id for e in events])
        await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        if self.outage:
            raise StoreUnavailable("the store is down")
        if self.poison & {e.id for e in events}:
            raise ValueError("an event the store refuses")
        await self.inner.put_events(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def recorder_on(counting: CountingStore) -> Recorder:
    return Recorder(cast(Store, counting))


async def test_a_lone_drop_is_written_at_once(store: Store) -> None:
    """One write_now is one transaction, and the event is readable when it returns."""
    counting = CountingStore(store)
    recorder = recorder_on(counting)
    await asyncio.wait_for(recorder.write_now([event("e1")]), 5)
    assert counting.batches == [["e1"]]
    assert await store.get_event("e1") is not None


async def test_concurrent_drops_share_transactions_and_each_is_stored_on_return(
    store: Store,
) -> None:
    """Under load many drops go in few transactions, and every caller finds its own event
    in the store the moment its write_now returns."""
    counting = CountingStore(store, delay_s=0.01)
    recorder = recorder_on(counting)

    async def drop(n: int) -> bool:
        await recorder.write_now([event(f"e{n}")])
        return await store.get_event(f"e{n}") is not None

    stored = await asyncio.wait_for(asyncio.gather(*(drop(n) for n in range(50))), 10)
    assert all(stored)
    assert len(counting.batches) < 10
    assert recorder.commits == len(counting.batches)
    assert sorted(i for batch in counting.batches for i in batch) == sorted(
        f"e{n}" for n in range(50)
    )


async def test_a_store_outage_fails_every_waiting_caller(store: Store) -> None:
    """When the store is down, each caller of the batch gets StoreUnavailable (the
    provider is answered 503 and retries); none is left waiting."""
    counting = CountingStore(store, delay_s=0.01)
    counting.outage = True
    recorder = recorder_on(counting)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(recorder.write_now([event(f"e{n}")]) for n in range(10)), return_exceptions=True
        ),
        5,
    )
    assert all(isinstance(r, StoreUnavailable) for r in results)
    counting.outage = False
    await recorder.write_now([event("after")])  # the writer recovers
    assert await store.get_event("after") is not None


async def test_one_refused_event_fails_only_its_own_caller(store: Store) -> None:
    """An error that is not an outage is retried caller by caller, so that the other
    events of the batch are stored and their callers succeed."""
    counting = CountingStore(store, delay_s=0.01)
    counting.poison = {"e3"}
    recorder = recorder_on(counting)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(recorder.write_now([event(f"e{n}")]) for n in range(6)), return_exceptions=True
        ),
        5,
    )
    assert [isinstance(r, ValueError) for r in results] == [n == 3 for n in range(6)]
    for n in (0, 1, 2, 4, 5):
        assert await store.get_event(f"e{n}") is not None


async def test_a_cancelled_caller_still_has_its_event_stored(store: Store) -> None:
    """Cancelling a waiting caller (a client gone) does not cancel the transaction."""
    counting = CountingStore(store, delay_s=0.05)
    recorder = recorder_on(counting)
    task = asyncio.create_task(recorder.write_now([event("gone")]))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await recorder.write_now([event("next")])  # queued behind the first transaction
    assert await store.get_event("gone") is not None


async def test_the_relay_waits_for_the_store_once_its_backlog_is_full(store: Store) -> None:
    """Buffered records (the forwarded ones) go to the store in the background; once
    ``backlog`` of them wait for it, ``keep_up`` (which the relay path awaits) waits for
    the store to take them, so that a store thread starved by a saturated event loop
    cannot fall behind without bound."""
    counting = CountingStore(store)
    counting.gate = asyncio.Event()
    recorder = Recorder(cast(Store, counting), flush_interval_s=0.01, backlog=3)
    flusher = asyncio.create_task(recorder.run())
    try:
        recorder.add(event("f0"))
        recorder.add(event("f1"))
        await asyncio.wait_for(recorder.keep_up(), 5)  # two waiting: no wait
        recorder.add(event("f2"))
        waiting = asyncio.create_task(recorder.keep_up())
        await asyncio.sleep(0.1)  # flushes start and wait at the gate
        assert not waiting.done()
        counting.gate.set()
        await asyncio.wait_for(waiting, 5)
        for n in range(3):
            assert await store.get_event(f"f{n}") is not None
    finally:
        flusher.cancel()


async def test_during_a_store_outage_the_relay_does_not_wait_for_the_backlog(
    store: Store,
) -> None:
    """With the store down the buffer keeps the gateway answering (fail-static): past
    the backlog, ``keep_up`` returns once a flush has found the store unreachable."""
    counting = CountingStore(store)
    counting.outage = True
    recorder = Recorder(cast(Store, counting), flush_interval_s=0.01, backlog=2)
    flusher = asyncio.create_task(recorder.run())
    try:
        for n in range(4):
            recorder.add(event(f"o{n}"))
        await asyncio.wait_for(recorder.keep_up(), 5)
        assert recorder.deferring and recorder.pending == 4
    finally:
        flusher.cancel()


async def test_an_admin_read_finds_the_buffered_records_without_waiting_for_a_flush(
    store: Store,
) -> None:
    """settle() (what the admin API's event reads call first) writes the buffered
    records (forwarded events) at once, whatever the flush interval."""
    recorder = Recorder(store, flush_interval_s=60)
    flusher = asyncio.create_task(recorder.run())
    try:
        recorder.add(event("r1"))
        await recorder.settle(5)
        assert await store.get_event("r1") is not None
        assert recorder.pending == 0
    finally:
        flusher.cancel()
