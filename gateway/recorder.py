"""Writes events and rule hit counters without making providers wait on the store.

* ``write_now`` is for quarantine: a dropped event is stored *before* its answer is sent
  (SPEC §4), in one local write. With a journal (``gateway.journal``, the SQLite store's
  default) that write is one append to this process's journal file, and a background
  task moves the journaled records into the store in batches (``settle`` waits for it).
  Without one, writes are group-committed: while one transaction is in flight, the drops
  that arrive queue up and go together in the next one, so that under load N drops cost
  one commit instead of N (each caller still returns only once its own events are
  committed, and gets the store's error if that commit failed). An idle gateway writes
  after one turn of the event loop: nothing waits for a batch to fill.
* ``add`` buffers every other record (forwarded, forward_failed, passthrough); a background
  task flushes the buffer in one transaction every ``flush_interval_s`` (200 ms: against
  50 ms, 9.4 against 12.2 KB of disk writes per relay, the latency the same within the
  bench machine's noise; docs/performance.md) or when it holds ``max_batch`` items. The
  admin API's reads (``settle``) flush it first.
* ``hit`` counts rule matches in memory; the same task adds them to the rules' ``hits``.

When the store fails, the buffer is kept (bounded by ``max_buffer``; what overflows is
counted in ``overflowed``) and retried on the next flush, so a short outage loses nothing.
While the store takes writes, at most ``backlog`` records wait for it: past that a drop
waits for the journal writer's next commit and the relay path (``keep_up``) for the next
flush. The store's thread runs at a lower priority (``[store] thread_nice``) and would
otherwise fall behind a saturated event loop without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from gateway.errors import StoreUnavailable
from gateway.journal import Journal
from gateway.store.base import EventRecord, Store

log = logging.getLogger("sendergate.recorder")


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float = 0.2,
        max_batch: int = 500,
        max_buffer: int = 100_000,
        linger_turns: int = 4,
        journal: Journal | None = None,
        journal_linger_s: float = 0.1,
        backlog: int = 2_000,
    ) -> None:
        self._store = store
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._max_buffer = max_buffer
        # How many records may wait for the store (journaled quarantine records, and the
        # buffered others) before the hot path waits for it: the store's thread runs at a
        # lower priority ([store] thread_nice) and a saturated event loop would otherwise
        # starve it, its backlog growing without bound. Not while the store is down
        # (``deferring``): then the journal and the buffer keep the gateway answering.
        self._backlog = backlog
        self._flushed = asyncio.Event()  # set (and replaced) after each flush
        self._flushing = 0  # records of the flush in flight
        self._flusher_running = False
        self._events: list[EventRecord] = []
        self._hits: dict[int, tuple[int, datetime]] = {}
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        # Group commit of write_now: what waits for the next transaction, and the task
        # that writes one transaction after another while anything waits.
        self._urgent: list[tuple[list[EventRecord], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._linger_turns = linger_turns
        # Journaled quarantine records not yet in the store, oldest first (the journal's
        # append order), and the task that moves them there.
        self._journal = journal
        # Nobody waits for the journal's transactions (the drops were answered once
        # journaled; an admin read's ``settle`` cuts the linger short), so they can be
        # large: at 50,000 events, 15 records a transaction cost 59 µs of CPU and 16.6 KB
        # of WAL each, 150 cost 43 µs and 11.5 KB (the random pages of the id and sender
        # indexes are shared by more records). 100 ms gathers about 150 at 1,500
        # drops/s (docs/performance.md, "The journal's writer gathers for 100 ms").
        self._journal_linger = journal_linger_s
        self._journaled: list[EventRecord] = []
        self._journal_writer: asyncio.Task[None] | None = None
        self._journal_progress = asyncio.Event()  # set (and replaced) after each commit
        self._journal_hurry = asyncio.Event()  # settle() cuts the writer's linger short
        self._journal_failing = False
        # Drops of the current loop turn, journaled together at its end (write_now).
        self._turn_events: list[EventRecord] = []
        self._turn_waiters: list[asyncio.Future[None]] = []
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
        """Store ``events`` now; return once they are committed, or journaled (raise if
        neither)."""
        loop = asyncio.get_running_loop()
        if self._journal is not None and len(self._journaled) >= self._backlog:
            await self._journal_below_backlog()  # not a coroutine per drop otherwise
        if self._journal is not None and len(self._journaled) < self._max_buffer:
            # The drops handled in this turn of the event loop go to the journal in one
            # write at its end, and are answered together, back to back. Per drop, the
            # write alone cost as much again: each one lets the store's thread take the
            # GIL, and answers sent one at a time, between the others' handling, wake the
            # reader each time (docs/performance.md). The delay is the other drops'
            # handling: microseconds at a moderate load.
            if not self._turn_waiters:
                loop.call_soon(self._journal_turn)
            self._turn_events.extend(events)
            done: asyncio.Future[None] = loop.create_future()
            self._turn_waiters.append(done)
            try:
                await done
                return
            except Exception as exc:  # disk full, say: the store itself is tried below
                if not self._journal_failing:
                    log.warning("quarantine journal not writable, writing to the store: %r", exc)
                self._journal_failing = True
        done = loop.create_future()
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

    def _journal_turn(self) -> None:
        assert self._journal is not None
        events, self._turn_events = self._turn_events, []
        waiters, self._turn_waiters = self._turn_waiters, []
        try:
            self._journal.append(events)
        except Exception as exc:  # the callers write to the store instead (write_now)
            for done in waiters:
                _settle(done, exc)
            return
        self._journal_failing = False
        self._journaled.extend(events)
        if self._journal_writer is None:
            self._journal_writer = asyncio.get_running_loop().create_task(self._write_journaled())
        for done in waiters:
            _settle(done, None)

    async def _write_journaled(self) -> None:
        """Move journaled records into the store, oldest first, one transaction per batch
        of what ``journal_linger_s`` (and the transaction before) gathered. A store outage
        is retried every ``flush_interval_s``; the records are safe in the journal
        meanwhile."""
        assert self._journal is not None
        try:
            while self._journaled:
                if len(self._journaled) < self._max_batch and not self._journal_hurry.is_set():
                    # Nobody waits for this transaction: let it gather. Under load a
                    # bigger one costs much less per record (docs/performance.md). An
                    # admin read waiting in settle() ends the wait.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._journal_linger):
                            await self._journal_hurry.wait()
                self._journal_hurry.clear()
                batch = self._journaled[: self._max_batch]
                try:
                    await self._store.put_events(batch)
                except StoreUnavailable as exc:
                    self.flush_errors += 1
                    if not self.deferring:
                        log.warning("quarantine records wait in the journal: %s", exc)
                    self.deferring = True
                    # Drops waiting for the backlog to shrink go on (into the journal).
                    self._journal_progress = _renewed(self._journal_progress)
                    await asyncio.sleep(self._interval)
                    continue
                except Exception:
                    # Not an outage but something a record did (a bug): store the others
                    # one by one; what the store refuses is logged and left behind.
                    log.exception("quarantine batch refused by the store, retrying singly")
                    if not await self._put_singly(batch):
                        await asyncio.sleep(self._interval)
                        continue
                if self.deferring:
                    log.info("store reachable again: journaled quarantine records written")
                    self.deferring = False
                self.commits += 1
                del self._journaled[: len(batch)]
                self._journal.committed(len(batch))
                self._journal_progress = _renewed(self._journal_progress)
        finally:
            self._journal_writer = None
            self._journal_progress = _renewed(self._journal_progress)

    async def _journal_below_backlog(self) -> None:
        """Wait while ``backlog`` or more journaled records wait for the store, and the
        store is reachable (``deferring`` says it is not)."""
        while (
            len(self._journaled) >= self._backlog
            and self._journal_writer is not None
            and not self.deferring
        ):
            await self._journal_progress.wait()

    async def keep_up(self) -> None:
        """Wait while ``backlog`` or more buffered records (``add``) wait for the store, the
        store is reachable and the background flush (``run``) is running: what the relay
        path awaits after recording a forward."""
        while (
            len(self._events) + self._flushing >= self._backlog
            and self._flusher_running
            and not self.deferring
        ):
            self._wake.set()
            await self._flushed.wait()

    async def _put_singly(self, batch: list[EventRecord]) -> bool:
        """False when the store became unreachable meanwhile (the batch is tried again)."""
        for event in batch:
            try:
                await self._store.put_events([event])
            except StoreUnavailable:
                return False
            except Exception:
                log.exception("quarantine record %s refused by the store: lost", event.id)
        return True

    async def settle(self, timeout_s: float = 2.0) -> None:
        """Wait until the quarantine records journaled and the records buffered before
        this call are in the store (read-your-writes for the admin API), or
        ``timeout_s`` at most (an outage: then they stay where they are)."""
        journal = self._journal
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                if self._events and not self.deferring:
                    # Shielded: a flush cut short would put back records (and rule hit
                    # counts) that its transaction goes on to write.
                    await asyncio.shield(self.flush())
                if journal is None or not self._journaled:
                    return
                target = journal.appended
                self._journal_hurry.set()
                while journal.committed_count < target and self._journal_writer is not None:
                    await self._journal_progress.wait()

    async def close_journal(self) -> None:
        """At shutdown: write what is journaled (one try), then close the journal; what
        the store did not take stays in the journal file for the next start."""
        journal, writer = self._journal, self._journal_writer
        if journal is None:
            return
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if self._journaled:
            try:
                await self._store.put_events(self._journaled)
            except Exception as exc:
                log.error("shutdown: journaled quarantine records not written: %s", exc)
            else:
                journal.committed(len(self._journaled))
                self._journaled = []
        journal.close()

    def hit(self, rule_id: int, at: datetime) -> None:
        count, _ = self._hits.get(rule_id, (0, at))
        self._hits[rule_id] = (count + 1, at)

    @property
    def pending(self) -> int:
        """Records and hit counts that would be lost if the process ended now (journaled
        quarantine records are not: the next start replays them)."""
        return len(self._events) + len(self._hits)

    @property
    def journaled(self) -> int:
        return len(self._journaled)

    async def flush(self) -> None:
        async with self._flush_lock:
            events, self._events = self._events, []
            hits, self._hits = self._hits, {}
            self._flushing = len(events)
            try:
                if events:
                    await self._store.put_events(events)
                    events = []
                if hits:
                    await self._store.add_rule_hits(hits)
                    hits = {}
            except StoreUnavailable as exc:
                self.flush_errors += 1
                if not self.deferring:  # once per outage, not at every flush
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
                self._flushing = 0
                self._flushed = _renewed(self._flushed)

    async def run(self) -> None:
        self._flusher_running = True
        try:
            await self._run()
        finally:
            self._flusher_running = False
            self._flushed = _renewed(self._flushed)

    async def _run(self) -> None:
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


def _renewed(event: asyncio.Event) -> asyncio.Event:
    """Wake whoever waits on ``event``; the new one is for the next wait."""
    event.set()
    return asyncio.Event()


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its caller was cancelled
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
