"""The cache of delivered answers that answers a provider's retry without the store."""

from __future__ import annotations

import gc

from gateway.pipeline import AnswerCache, Reply


def test_a_cached_answer_comes_back_as_sent() -> None:
    cache = AnswerCache()
    sent = Reply(200, "text/xml", b"<Response><Dial>+1555</Dial></Response>", (("x-app", "1"),))
    cache.put("evt_a", sent)
    got = cache.get("evt_a")
    assert got == sent
    assert got is not None and got.wire_headers == sent.wire_headers
    assert cache.get("evt_b") is None


def test_the_least_recently_used_answer_goes_first() -> None:
    cache = AnswerCache(max_size=2)
    for key in ("evt_1", "evt_2"):
        cache.put(key, Reply(200, None, key.encode()))
    assert cache.get("evt_1") is not None  # evt_2 is now the oldest
    cache.put("evt_3", Reply(200, None, b"3"))
    assert cache.get("evt_2") is None
    assert cache.get("evt_1") is not None and cache.get("evt_3") is not None


def test_cached_answers_leave_nothing_for_the_garbage_collector_to_walk() -> None:
    # 20,000 tracked objects in the oldest generation made each full collection pause
    # the event loop for 10-15 ms on the relay path (docs/performance.md).
    cache = AnswerCache()
    for i in range(100):
        cache.put(f"evt_{i}", Reply(200, "text/xml", b"<Response/>", (("x-app", str(i)),)))
    for _ in range(3):  # a tuple is untracked once what it holds is: one level a pass
        gc.collect()
    entries = list(cache._items.values())
    assert entries and not any(gc.is_tracked(entry) for entry in entries)
