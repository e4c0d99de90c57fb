"""Per-sender rate limits (``gateway.ratelimit``), driven by an injected clock: the
``now`` each call is given."""

from __future__ import annotations

import pytest

from gateway.ratelimit import LocalRateLimiter, Rate, RateLimiter, parse_rate

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
