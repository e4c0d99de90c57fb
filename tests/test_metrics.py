"""The quarantine gauge's refresh (``gateway.app._count_quarantine``) through a store
outage: the gauge keeps its last count, the task keeps running, and the log says so once,
not once per interval. (Its values after real traffic: ``tests/test_traffic_e2e.py``.)"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gateway.app import _count_quarantine
from gateway.errors import StoreUnavailable
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.base import EventRecord
from tests.test_recorder import event


class FlakyCounts:
    """The store under test, with its ``count_events`` calls counted and failed on
    demand."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls = 0
        self.outage = False

    async def count_events(self, outcome: str) -> int:
        self.calls += 1
        if self.outage:
            raise StoreUnavailable("the store is down")
        return await self.inner.count_events(outcome)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``check`` (a gauge, a call count) until it holds; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if check():
            return
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.005)


def record(event_id: str, outcome: str, second: int) -> EventRecord:
    return dataclasses.replace(
        event(event_id),
        verdict="drop" if outcome == "quarantined" else "deliver",
        outcome=outcome,
        received_at=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC),
    )


async def test_quarantine_gauge_keeps_its_count_through_an_outage(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The gauge follows the store; while the store is down it keeps the last count and
    one warning is logged for many failed counts; once the store answers it follows
    again and one line says so."""
    caplog.set_level(logging.INFO, logger="sendergate")
    flaky = FlakyCounts(store)
    metrics = Metrics()

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("sendergate_quarantine_events")

    await store.put_events(
        [
            record("q1", "quarantined", 1),
            record("q2", "quarantined", 2),
            record("f1", "forwarded", 3),
        ]
    )
    task = asyncio.create_task(_count_quarantine(cast(Store, flaky), metrics, 0.005))
    try:
        await until(lambda: gauge() == 2)

        flaky.outage = True
        await store.put_events([record("q3", "quarantined", 4)])
        failed_from = flaky.calls
        await until(lambda: flaky.calls >= failed_from + 10)
        assert gauge() == 2
        assert not task.done()

        flaky.outage = False
        await until(lambda: gauge() == 3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "sendergate"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert "the store is down" in lines[0][1]
