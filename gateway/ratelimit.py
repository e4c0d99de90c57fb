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
* ``RedisRateLimiter`` (here): shared by every replica, for the Redis store (``create_app``
  picks it when ``[store] url`` is Redis). Its ``allow`` does one round trip on the
  store's own connection pool: a Lua script reads the keys
  ``{key_prefix}rl:{target}:{sender}:{window}`` of the current and the previous window
  (``window`` is ``floor(now / period)``), computes the same estimate, ``INCR``s the
  current window only when the event is allowed, and sets ``PEXPIRE`` to two periods so
  that old windows vanish by themselves. Only events to a target with a ``rate_limit``
  pay that round trip (about 50–100 µs on a nearby Redis); every other event never
  touches the limiter. ``now`` is the replica's clock, so the replicas' clocks should
  agree (NTP) to well within a period. When Redis cannot be reached (or does not answer
  within ``timeout_s``) it falls back to a ``LocalRateLimiter``: fail-static, like
  decisions. The limit then holds per process until Redis is back; the switch is logged
  once each way, and Redis is tried again after ``retry_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from gateway.errors import StoreUnavailable

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from gateway.store.redis import RedisStore

__all__ = [
    "PERIODS",
    "LocalRateLimiter",
    "Rate",
    "RateLimiter",
    "RedisRateLimiter",
    "parse_rate",
]

log = logging.getLogger("sendergate.ratelimit")

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


# One key's windows: (index, period, current, previous), ``index`` being which fixed
# window ``current`` counts, floor(now / period). A tuple of ints, replaced on each check:
# the garbage collector untracks such tuples, whereas up to ``max_keys`` small objects
# would sit in its oldest generation and every full collection would walk them (a pause
# of the event loop that grows with the number of senders; docs/performance.md).
_Window = tuple[int, int, int, int]


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
        if w is None or w[1] != period:
            current = previous = 0
        else:
            w_index, _, current, previous = w
            if index > w_index:
                previous = current if index == w_index + 1 else 0
                current = 0
            else:
                # The same window, or a clock that stepped back: count in the current one.
                index = w_index
        elapsed = min(max(0.0, now - index * period), period)
        weight = 1.0 - elapsed / period
        allowed = previous * weight + current + 1 <= rate.limit
        if allowed:
            current += 1
        self._windows[key] = (index, period, current, previous)
        if len(self._windows) > self._max:
            del self._windows[next(iter(self._windows))]
        return allowed

    async def allow(self, target_id: str, sender: str, limit_spec: str, now: float) -> bool:
        return self.check(target_id, sender, limit_spec, now)


# KEYS[1] the current window's count, KEYS[2] the previous window's; ARGV[1] the limit,
# ARGV[2] the weight of the previous window, ARGV[3] the keys' time to live in ms.
# Answers 1 (allowed, and counted) or 0 (over the limit, not counted).
_ALLOW_LUA = r"""
local counts = redis.call('MGET', KEYS[1], KEYS[2])
local current = tonumber(counts[1]) or 0
local previous = tonumber(counts[2]) or 0
if previous * tonumber(ARGV[2]) + current + 1 > tonumber(ARGV[1]) then
  return 0
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisRateLimiter:
    """The ``RateLimiter`` shared by the replicas of a Redis store (see the module
    docstring). It borrows the store's client (``RedisStore.client()``): the same pool,
    timeouts and fail-fast breaker. ``local`` is the fallback while Redis is unreachable;
    ``degraded`` tells whether the limiter is counting there now."""

    def __init__(
        self,
        store: RedisStore,
        *,
        timeout_s: float = 0.5,
        retry_s: float = 1.0,
        local: LocalRateLimiter | None = None,
    ) -> None:
        # redis-py is imported by Redis deployments only (as gateway.store.open_store does).
        from redis.exceptions import RedisError

        self._store = store
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._failures: tuple[type[BaseException], ...] = (
            StoreUnavailable,
            RedisError,
            OSError,
            TimeoutError,
        )
        self.local = local if local is not None else LocalRateLimiter()
        self.degraded = False
        self._retry_at = 0.0  # monotonic time before which Redis is not tried again
        self._script: AsyncScript | None = None

    def key(self, target_id: str, sender: str, window: int) -> str:
        """The Redis key counting ``sender``'s events to ``target_id`` in fixed window
        number ``window`` (``floor(now / period)``)."""
        return f"{self._store.prefix}rl:{target_id}:{sender}:{window}"

    async def allow(self, target_id: str, sender: str, limit_spec: str, now: float) -> bool:
        rate = parse_rate(limit_spec)
        if self.degraded and time.monotonic() < self._retry_at:
            return self.local.check(target_id, sender, limit_spec, now)
        period = rate.period_s
        window = math.floor(now / period)
        elapsed = min(max(0.0, now - window * period), period)
        keys = [self.key(target_id, sender, window), self.key(target_id, sender, window - 1)]
        args: list[int | str] = [rate.limit, repr(1.0 - elapsed / period), 2000 * period]
        try:
            async with asyncio.timeout(self._timeout_s), self._store.client() as r:
                if self._script is None:
                    self._script = r.register_script(_ALLOW_LUA)
                allowed = await self._script(keys=keys, args=args, client=r)
        except self._failures as exc:
            self._retry_at = time.monotonic() + self._retry_s
            if not self.degraded:
                self.degraded = True
                log.warning(
                    "rate limits: Redis unavailable (%s); counting per process until it is back",
                    exc or type(exc).__name__,
                )
            return self.local.check(target_id, sender, limit_spec, now)
        if self.degraded:
            self.degraded = False
            log.info("rate limits: Redis is back; counting in Redis again, shared by replicas")
        return bool(allowed)
