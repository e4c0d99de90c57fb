"""Writes events and rule hit counters without making providers wait on the store.

* ``write_now`` is for quarantine: a dropped event is stored *before* its answer is sent
  (SPEC §4), in one local write. Writes are group-committed: while one transaction is
  in flight, the drops that arrive queue up and go together in the next one, so that
  under load N drops cost one commit instead of N (each caller still returns only once
  its own events are committed, and gets the store's error if that commit failed). An
  idle gateway writes after one turn of the event loop: nothing waits for a batch to fill.
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
        linger_turns: int = 4,
    ) -> None:
        self._store = store
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        self._events: list[EventRecord] = []
        self._hits: dict[int, tuple[int, datetime]] = {}
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        # Group commit of write_now: what waits for the next transaction, and the task
        # that writes one transaction after another while anything waits.
        self._urgent: list[tuple[list[EventRecord], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._linger_turns = linger_turns
        self.commits = 0  # transactions write_now made (fewer than calls under load)
        self.overflowed = 0
        self.flush_errors = 0
        self.deferring = False  # the last flush failed (an outage is in progress)

    def add(self, event: EventRecord) -> None:
        if len(self._events) >= self._max_buffer:
            self.overflowed += 1
            return
        self._events.append(event)
        if len(self._events) >= self._max_batch:
            self._wake.set()

    async def write_now(self, events: list[EventRecord]) -> None:
        """Store ``events`` now; return once they are committed (raise if they are not)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._urgent.append((events, done))
        if self._writer is None:
            self._writer = loop.create_task(self._write_urgent())
        # The transaction goes on if this caller is cancelled: the events are stored.
        await done

    async def _write_urgent(self) -> None:
        try:
            while self._urgent:
                # Linger while more drops keep arriving, a few turns of the event loop
                # at most: under load a bigger transaction costs much less per event
                # (docs/performance.md); a lone drop costs one turn (microseconds).
                for _ in range(self._linger_turns):
                    queued = len(self._urgent)
                    await asyncio.sleep(0)
                    if len(self._urgent) == queued:
                        break
                batch, self._urgent = self._urgent, []
                await self._commit(batch)
        except BaseException as exc:  # cancelled while lingering: release the waiters
            waiting, self._urgent = self._urgent, []
            for _, done in waiting:
                _settle(done, StoreUnavailable(f"quarantine write interrupted: {exc!r}"))
            raise
        finally:
            self._writer = None

    async def _commit(self, batch: list[tuple[list[EventRecord], asyncio.Future[None]]]) -> None:
        try:
            self.commits += 1
            await self._store.put_events([e for events, _ in batch for e in events])
        except StoreUnavailable as exc:
            for _, done in batch:
                _settle(done, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # Not an outage but something one event did: write each caller's events on
            # their own, so that only the callers whose events fail see the error.
            for one in batch:
                await self._commit([one])
            return
        except BaseException as exc:  # cancelled: the callers must not wait forever
            for _, done in batch:
                _settle(done, StoreUnavailable(f"quarantine write interrupted: {exc!r}"))
            raise
        for _, done in batch:
            _settle(done, None)

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
                if not self.deferring:  # once per outage, not every 50 ms
                    log.warning("recording deferred, store unavailable: %s", exc)
                self.deferring = True
            else:
                if self.deferring:
                    log.info("store reachable again: deferred records written")
                self.deferring = False
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
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the wait ends, and this loop would run on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._events or self._hits:
                try:
                    await self.flush()
                except Exception:  # a bug must not stop recording for the process's life
                    log.exception("recorder flush failed")


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its caller was cancelled
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
