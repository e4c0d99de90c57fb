"""Writes events and rule hit counters without making providers wait on the store.

* ``write_now`` is for quarantine: a dropped event is stored *before* its answer is sent
  (SPEC §4), in one local write.
* ``add`` buffers every other record (forwarded, forward_failed, passthrough); a background
  task flushes the buffer in one transaction every ``flush_interval_s`` or when it holds
  ``max_batch`` items.
* ``hit`` counts rule matches in memory; the same task adds them to the rules' ``hits``.

When the store fails, the buffer is kept (bounded by ``max_buffer``; what overflows is
counted in ``overflowed``) and retried on the next flush, so a short outage loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from gateway.errors import StoreUnavailable
from gateway.store.base import EventRecord, Store

log = logging.getLogger("sendergate.recorder")


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float = 0.05,
        max_batch: int = 500,
        max_buffer: int = 100_000,
    ) -> None:
        self._store = store
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._events: list[EventRecord] = []
        self._hits: dict[int, tuple[int, datetime]] = {}
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self.overflowed = 0
        self.flush_errors = 0

    def add(self, event: EventRecord) -> None:
        if len(self._events) >= self._max_buffer:
            self.overflowed += 1
            return
        self._events.append(event)
        if len(self._events) >= self._max_batch:
            self._wake.set()

    async def write_now(self, events: list[EventRecord]) -> None:
        await self._store.put_events(events)

    def hit(self, rule_id: int, at: datetime) -> None:
        count, _ = self._hits.get(rule_id, (0, at))
        self._hits[rule_id] = (count + 1, at)

    @property
    def pending(self) -> int:
        return len(self._events) + len(self._hits)

    async def flush(self) -> None:
        async with self._flush_lock:
            events, self._events = self._events, []
            hits, self._hits = self._hits, {}
            try:
                if events:
                    await self._store.put_events(events)
                    events = []
                if hits:
                    await self._store.add_rule_hits(hits)
                    hits = {}
            except StoreUnavailable as exc:
                self.flush_errors += 1
                log.warning("recording deferred, store unavailable: %s", exc)
            finally:
                # Whatever was not written goes back in front of what arrived meanwhile.
                if events:
                    room = max(0, self._max_buffer - len(self._events))
                    self.overflowed += max(0, len(events) - room)
                    self._events[:0] = events[:room]
                for rule_id, (count, at) in hits.items():
                    old_count, old_at = self._hits.get(rule_id, (0, at))
                    self._hits[rule_id] = (old_count + count, max(at, old_at))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            if self._events or self._hits:
                try:
                    await self.flush()
                except Exception:  # a bug must not stop recording for the process's life
                    log.exception("recorder flush failed")
