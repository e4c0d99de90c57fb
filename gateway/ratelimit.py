"""Per-sender rate limits of a target (``rate_limit = "20/hour"``, SPEC §7).

``RateLimiter.allow(target_id, sender, limit_spec, now)`` answers whether one more event
from ``sender`` to ``target_id`` fits the target's limit at epoch time ``now``; the
pipeline drops an event it refuses with reason ``rate_limited`` and quarantines it.

The algorithm is the *sliding window counter*: per (target, sender) a count for the
current fixed window and the previous one; the previous window counts in proportion to
how much of it the sliding window still covers::

    estimate = previous * (1 - elapsed_in_current / period) + current
    allowed  = estimate + 1 <= limit

It needs two integers per key (no log of timestamps), never lets a burst of 2 × N
through at a window boundary as a fixed window does, and smooths the limit over the
period. Only allowed events are counted: a sender who keeps sending past the limit still
gets N events per period through, and the excess is what is dropped.

Two implementations fit the ``RateLimiter`` protocol:

* ``LocalRateLimiter`` (here): in-process, for one process. Memory is bounded by
  ``max_keys``: the least recently seen (target, sender) pairs are forgotten first, so a
  flood of distinct senders cannot grow it. ``allow`` never awaits anything; ``check`` is
  the same call without the coroutine, for callers that prefer it.
* A Redis-backed limiter, shared by every replica, for the Redis store (to be written
  with it). Its ``allow`` does one round trip: a Lua script (or ``MULTI``) on the keys
  ``sg:rl:{target}:{sender}:{window}`` for the current and previous window computes the
  same estimate, ``INCR``s the current window only when the event is allowed, and sets
  ``EXPIRE`` to two periods so that old windows vanish by themselves. When Redis is
  down it should fall back to a ``LocalRateLimiter`` (fail-static, like decisions).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

__all__ = ["PERIODS", "LocalRateLimiter", "Rate", "RateLimiter", "parse_rate"]

PERIODS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_SPEC = re.compile(r"\s*([1-9][0-9]{0,8})\s*/\s*(second|minute|hour|day)\s*")


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` events per ``period_s`` seconds."""

    limit: int
    period_s: int


@lru_cache(maxsize=4096)
def parse_rate(spec: str) -> Rate:
    """Parse ``"N/second|minute|hour|day"`` (spaces allowed); ``ValueError`` otherwise."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ValueError(f"rate limit must look like 20/hour (N/second|minute|hour|day): {spec!r}")
    return Rate(int(m[1]), PERIODS[m[2]])


class RateLimiter(Protocol):
    """What the pipeline asks before it decides an event for a target with a rate limit."""

    async def allow(self, target_id: str, sender: str, limit_spec: str, now: float) -> bool:
        """True when one more event from ``sender`` to ``target_id`` fits ``limit_spec``
        at epoch time ``now`` (and count it); False when it is over the limit."""
        ...


class _Window:
    __slots__ = ("current", "index", "period", "previous")

    def __init__(self, index: int, period: int) -> None:
        self.index = index  # which fixed window ``current`` counts: floor(now / period)
        self.period = period
        self.current = 0
        self.previous = 0


class LocalRateLimiter:
    """The in-process ``RateLimiter`` (see the module docstring)."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max = max_keys
        # Insertion order is recency: a key is re-inserted each time it is seen, and the
        # first key is the one to forget when the table is full.
        self._windows: dict[tuple[str, str], _Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def check(self, target_id: str, sender: str, limit_spec: str, now: float) -> bool:
        """``allow`` without the coroutine."""
        rate = parse_rate(limit_spec)
        period = rate.period_s
        index = math.floor(now / period)
        key = (target_id, sender)
        w = self._windows.pop(key, None)
        if w is None or w.period != period:
            w = _Window(index, period)
        elif index > w.index:
            w.previous = w.current if index == w.index + 1 else 0
            w.current = 0
            w.index = index
        else:
            # The same window, or a clock that stepped back: count in the current window.
            index = w.index
        self._windows[key] = w
        if len(self._windows) > self._max:
            del self._windows[next(iter(self._windows))]
        elapsed = min(max(0.0, now - index * period), period)
        weight = 1.0 - elapsed / period
        if w.previous * weight + w.current + 1 > rate.limit:
            return False
        w.current += 1
        return True

    async def allow(self, target_id: str, sender: str, limit_spec: str, now: float) -> bool:
        return self.check(target_id, sender, limit_spec, now)
