"""Answers sent together at the end of a turn of the event loop.

Under load, one turn of the event loop handles several webhooks. Sent as each one is
ready, their answers leave one at a time, separated by the handling of the others, and
each send wakes the receiving process anew: an inter-processor interrupt when it waits
on another core, a context switch when it shares ours. Sent together at the end of the
turn, one wake-up serves them all. On the 2-core benchmark machine this took the relay
from 399 to 319-338 µs of gateway CPU per event and the drop path from 243 to about
217 (docs/performance.md, "Where the time went"). The delay is the rest of the turn's
work: nothing when the gateway is idle, a few hundred microseconds under full load.
"""

from __future__ import annotations

import asyncio


class TurnGate:
    """``await gate.end_of_turn()`` returns once the callbacks already scheduled in this
    turn have run: everyone who waits in the same turn goes on together. One per event
    loop (the app makes one; Http1Pool batches its writes the same way)."""

    def __init__(self) -> None:
        # One future per waiter, not one shared: cancelling a task cancels the future
        # it awaits, and that must not cancel the others.
        self._waiters: list[asyncio.Future[None]] = []

    async def end_of_turn(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._waiters:
            loop.call_soon(self._release)
        done: asyncio.Future[None] = loop.create_future()
        self._waiters.append(done)
        await done

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for done in waiters:
            if not done.done():
                done.set_result(None)
