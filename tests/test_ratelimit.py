"""Per-sender rate limits (``gateway.ratelimit``), driven by an injected clock: the
``now`` each call is given. The Redis limiter runs against a real redis-server: the same
answers as the local one, shared by two stores (two replicas), windows that expire by
themselves, and the local fallback while Redis is stopped or stuck."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.ratelimit import LocalRateLimiter, Rate, RateLimiter, RedisRateLimiter, parse_rate
from gateway.settings import StoreSettings
from gateway.store.redis import RedisStore
from tests.apptools import make_settings
from tests.conftest import fresh_prefix
from tests.redis_support import RedisServer, require_redis_server

HOUR = 3600.0
T = 1_700_000_000.0 - (1_700_000_000.0 % HOUR)  # the start of an hour window


def _allowed(limiter: LocalRateLimiter, n: int, now: float, sender: str = "+1415") -> int:
    return sum(limiter.check("sales@acme.example", sender, "20/hour", now) for _ in range(n))


@pytest.mark.parametrize(
    ("spec", "rate"),
    [
        ("20/hour", Rate(20, 3600)),
        ("1/second", Rate(1, 1)),
        (" 5 / minute ", Rate(5, 60)),
        ("1000/day", Rate(1000, 86400)),
    ],
)
def test_parse_rate(spec: str, rate: Rate) -> None:
    """N/second|minute|hour|day parses to a count and a period in seconds."""
    assert parse_rate(spec) == rate


@pytest.mark.parametrize("spec", ["", "20", "0/hour", "20/week", "-1/day", "x/hour", "20/hours"])
def test_parse_rate_refuses_other_shapes(spec: str) -> None:
    """Anything else is a ValueError that shows the expected shape."""
    with pytest.raises(ValueError, match="20/hour"):
        parse_rate(spec)


def test_the_local_limiter_leaves_nothing_for_the_garbage_collector_to_walk() -> None:
    # One entry per (target, sender) seen, up to max_keys: as objects in the collector's
    # oldest generation they would lengthen every full collection (docs/performance.md).
    limiter = LocalRateLimiter()
    for i in range(100):
        assert limiter.check("tgt_1", f"+1555000{i:04d}", "5/minute", 1_000.0)
    assert not limiter.check("tgt_1", "+15550000000", "1/minute", 1_000.0)
    for _ in range(2):
        gc.collect()
    windows = list(limiter._windows.values())
    assert len(windows) == 100 and not any(gc.is_tracked(w) for w in windows)


def test_limit_holds_within_a_window() -> None:
    """N events in the period pass; the next ones from the same sender do not."""
    limiter = LocalRateLimiter()
    assert _allowed(limiter, 20, T + 10) == 20
    assert _allowed(limiter, 5, T + 20) == 0


def test_limit_is_per_target_and_sender() -> None:
    """Another sender, or the same sender writing to another target, has its own count."""
    limiter = LocalRateLimiter()
    assert _allowed(limiter, 25, T) == 20
    assert _allowed(limiter, 25, T, sender="+1650") == 20
    assert sum(limiter.check("+14155550100", "+1415", "20/hour", T) for _ in range(25)) == 20


def test_previous_window_counts_in_proportion() -> None:
    """Past the window boundary the previous window still counts for the part of it the
    sliding window covers: half-way into the next hour, half the limit is free again."""
    limiter = LocalRateLimiter()
    assert _allowed(limiter, 20, T + HOUR - 1) == 20
    assert _allowed(limiter, 5, T + HOUR + 1) == 0  # no burst of 2 x N at the boundary
    assert _allowed(limiter, 20, T + HOUR + HOUR / 2) == 10
    assert _allowed(limiter, 20, T + 3 * HOUR) == 20  # two windows on: all forgotten


def test_refused_events_do_not_count() -> None:
    """Only allowed events count, so a sender who keeps hammering still gets N per period
    through (the excess is what is dropped)."""
    limiter = LocalRateLimiter()
    assert _allowed(limiter, 1000, T) == 20
    assert _allowed(limiter, 1000, T + 2 * HOUR) == 20


def test_changing_the_period_starts_over() -> None:
    """A target whose limit moves to another period counts afresh."""
    limiter = LocalRateLimiter()
    assert _allowed(limiter, 20, T) == 20
    assert limiter.check("sales@acme.example", "+1415", "3/minute", T + 1)


def test_clock_stepping_back_is_harmless() -> None:
    """A clock that steps back counts in the current window rather than failing."""
    limiter = LocalRateLimiter()
    assert _allowed(limiter, 10, T + HOUR + 5) == 10
    assert _allowed(limiter, 20, T + 5) == 10


def test_memory_is_bounded_least_recently_seen_first() -> None:
    """Past max_keys the least recently seen (target, sender) is forgotten: its count
    starts over, while recently seen ones keep theirs."""
    limiter = LocalRateLimiter(max_keys=3)
    for sender in ("a", "b", "c"):
        assert _allowed(limiter, 20, T, sender=sender) == 20
    assert _allowed(limiter, 1, T, sender="a") == 0  # "a" is now the most recent
    assert _allowed(limiter, 1, T, sender="d") == 1  # forgets "b"
    assert len(limiter) == 3
    assert _allowed(limiter, 20, T, sender="b") == 20
    assert _allowed(limiter, 1, T, sender="a") == 0
    with pytest.raises(ValueError):
        LocalRateLimiter(max_keys=0)


async def test_allow_is_the_protocol_entry_point() -> None:
    """allow (the RateLimiter protocol's coroutine) answers as check does."""
    limiter: RateLimiter = LocalRateLimiter()
    answers = [await limiter.allow("t", "s", "2/second", T) for _ in range(3)]
    assert answers == [True, True, False]
    assert await limiter.allow("t", "s", "2/second", T + 2)


# --- shared in Redis ---------------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, key_prefix=fresh_prefix())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.mark.redis
async def test_redis_answers_as_the_local_limiter(redis_store: RedisStore) -> None:
    """The same events (targets with per-second, per-minute and per-hour limits, a few
    senders, a clock that crosses many window boundaries) get the same answers from the
    Redis limiter as from the local one: the same sliding window, per target and sender."""
    rng = random.Random(5)
    limits = {"t-second": "2/second", "t-minute": "4/minute", "t-hour": "6/hour"}
    steps = (0.0,) * 6 + (0.01, 0.1, 0.3, 0.9, 17.0, 45.0, 300.0)
    local, shared = LocalRateLimiter(), RedisRateLimiter(redis_store)
    now = T
    answers: dict[str, list[tuple[bool, bool]]] = {target: [] for target in limits}
    for _ in range(600):
        now += rng.choice(steps)
        target = rng.choice(list(limits))
        sender = rng.choice(("+14155550001", "+14155550002", "bob@spam.example"))
        spec = limits[target]
        answers[target].append(
            (local.check(target, sender, spec, now), await shared.allow(target, sender, spec, now))
        )
    for pairs in answers.values():
        assert [x for x, _ in pairs] == [y for _, y in pairs]
        assert {x for x, _ in pairs} == {True, False}  # the limits were reached
    assert not shared.degraded


@pytest.mark.redis
async def test_redis_limit_is_shared_per_target_and_sender(redis_server: RedisServer) -> None:
    """Two stores on one Redis (two replicas) share each (target, sender) count: 3/minute
    lets 3 of 5 events through whichever replica they reach; another sender, or the same
    sender to another target, has its own count."""
    prefix = fresh_prefix()
    a, b = (RedisStore(redis_server.url, key_prefix=prefix) for _ in range(2))
    await a.open()
    await b.open()
    try:
        on_a, on_b = RedisRateLimiter(a), RedisRateLimiter(b)
        spec = "3/minute"
        first = [await on_a.allow("+14155550101", "+14155550144", spec, T) for _ in range(3)]
        then = [await on_b.allow("+14155550101", "+14155550144", spec, T + 1) for _ in range(2)]
        assert first == [True, True, True] and then == [False, False]
        assert await on_b.allow("+14155550101", "+14155550145", spec, T + 2)
        assert await on_a.allow("+14155550102", "+14155550144", spec, T + 2)
        assert not await on_a.allow("+14155550101", "+14155550144", spec, T + 59)
        assert await on_a.allow("+14155550101", "+14155550144", spec, T + 120)  # expired
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_windows_expire_by_themselves(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """A window is one key, {prefix}rl:{target}:{sender}:{window}, living two periods:
    with 2/second on the real clock the key is gone after two seconds and the sender may
    send again."""
    limiter = RedisRateLimiter(redis_store)
    target, sender = "+14155550100", "+14155550199"
    now = time.time()
    assert [await limiter.allow(target, sender, "2/second", now) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    key = f"{redis_store.prefix}rl:{target}:{sender}:{math.floor(now)}"
    assert limiter.key(target, sender, math.floor(now)) == key
    assert redis_server.command("GET", key) == b"2"
    ttl = int(redis_server.command("PTTL", key)[1:])
    assert 0 < ttl <= 2000
    deadline = time.monotonic() + 4.0
    while redis_server.command("EXISTS", key) != b":0":
        assert time.monotonic() < deadline, "the window key did not expire"
        await asyncio.sleep(0.05)
    assert await limiter.allow(target, sender, "2/second", time.time())


@pytest.mark.redis
async def test_redis_stopped_falls_back_to_local_counts_and_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis stopped the limiter counts per process (fail-static: a warning logged
    once, however many events); with Redis back it counts there again, where the events
    from before the outage still are."""
    redis = RedisServer(tmp_path / "redis", binary=require_redis_server())
    redis.start()
    store = RedisStore(redis.url, key_prefix="rl-test:", breaker_s=0.0)
    await store.open()
    limiter = RedisRateLimiter(store, retry_s=0.0)
    caplog.set_level(logging.INFO, logger="sendergate.ratelimit")
    try:
        args = ("+14155550100", "+14155550177", "3/hour")
        assert [await limiter.allow(*args, T) for _ in range(2)] == [True, True]
        redis.stop(save=True)
        # Local counts start from nothing: 3 more get through, then the limit holds.
        assert [await limiter.allow(*args, T + 1) for _ in range(5)] == [True] * 3 + [False] * 2
        assert limiter.degraded
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "per process" in warnings[0].getMessage()

        redis.start()
        assert [await limiter.allow(*args, T + 2) for _ in range(2)] == [True, False]
        assert not limiter.degraded
        assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    finally:
        await store.close()
        redis.stop(save=False)


@pytest.mark.redis
async def test_a_stuck_redis_costs_at_most_the_timeout() -> None:
    """A Redis that accepts connections but never answers: the first event waits
    timeout_s and is counted locally; the next ones do not wait for retry_s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # never accepted, never answered
        port = silent.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", key_prefix="stuck:", timeout_s=5.0)
        await store.open()
        limiter = RedisRateLimiter(store, timeout_s=0.2, retry_s=60.0)
        try:
            began = time.monotonic()
            assert await limiter.allow("t", "s", "1/minute", T)
            assert 0.15 < time.monotonic() - began < 2.0
            assert limiter.degraded
            began = time.monotonic()
            assert not await limiter.allow("t", "s", "1/minute", T)
            assert time.monotonic() - began < 0.1
        finally:
            await store.close()


@pytest.mark.redis
def test_the_app_counts_in_redis_when_the_store_is_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """create_app picks the shared limiter for a Redis store, the local one for SQLite."""
    local = create_app(make_settings(tmp_path)).state.gw
    assert type(local.extras["rate_limiter"]) is LocalRateLimiter
    store = StoreSettings(url=redis_server.url, key_prefix=fresh_prefix())
    shared = create_app(make_settings(tmp_path, store=store)).state.gw
    assert isinstance(shared.extras["rate_limiter"], RedisRateLimiter)
    assert shared.extras["pipeline"].limiter is shared.extras["rate_limiter"]
