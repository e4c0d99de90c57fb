"""A bounded load of signed webhooks through two replicas on Redis while things fail.

Two ``sendergate serve`` processes share a private redis-server; a recording application
answers the forwards. A provider-like client (``support.ProviderClient``) sends a mix of
Twilio voice and SMS, Telnyx messaging, Mailgun and Postmark webhooks, from allowed and
from blocked senders, each with a unique provider event id, about 40 a second with at most
8 in flight, and retries a retryable answer (5xx, connection error) later, as providers do.
Meanwhile, one after the other:

  (a) the application is stopped, then started again;
  (b) redis-server is stopped (its data saved, as with AOF), then started again;
  (c) replica a is killed (SIGKILL), then started again.

Afterwards every event is accounted for exactly once: an allowed one was received by the
application (told apart by its ``X-SenderGate-Event-Id``, which is also its ``webhook-id``)
and its provider finally heard the application's answer; a blocked one is in quarantine
(``GET /v1/events?outcome=quarantined``), never reached the application, and its provider
finally heard the drop answer. "retried→" columns count the events whose provider first
heard a retryable answer. The table is printed (``pytest -s``) and attached to the test
report (``record_property``); docs/operations.md explains how to read it.

At-least-once, the documented case: an answer lost on the way. A replica killed after
the application answered and before the provider heard it leaves the provider to retry,
and the retry (to another replica, which cannot know) is forwarded again with the same
``webhook-id``; so is one whose forward timed out (504) or lost its connection to the
application (502) after the application had it. Duplicates are allowed only for events
with such an attempt, and are counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import providers_support as ps
from tests.redis_support import RedisServer, free_port, require_redis_server
from tests.reliability.support import (
    TWIML,
    Event,
    EventFactory,
    ProviderClient,
    ServeProcess,
    account,
    events_with_outcome,
    gateway_config,
    wait_for,
)
from tests.servers import RecordingApp, Reply, UvicornThread

pytestmark = [pytest.mark.reliability, pytest.mark.redis, pytest.mark.slow]

SEED = 7
RATE_PER_S = 40.0
MAX_EVENTS = 800  # the bound on the load, whatever the timing


class World:
    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(tmp / "redis", binary=require_redis_server())
        self.app = RecordingApp(routes={"/twilio": Reply(200, "text/xml", TWIML)})
        self.downstream = UvicornThread(self.app)
        self.keys = ps.Ed25519Keys()
        self.replicas: list[ServeProcess] = []
        for name in ("a", "b"):
            port = free_port()
            config = tmp / f"replica-{name}.toml"
            config.write_text(
                gateway_config(
                    port=port,
                    store_url=self.redis.url,
                    app_url=self.downstream.url,
                    telnyx_public_key=self.keys.public_b64,
                )
            )
            self.replicas.append(ServeProcess(name, config, port, tmp / f"replica-{name}.log"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    w.redis.start()
    w.downstream.start()
    try:
        for replica in w.replicas:
            replica.start()
        for replica in w.replicas:
            replica.wait_ready()
        yield w
    except BaseException:
        for replica in w.replicas:
            print(f"--- replica {replica.name} ---\n{replica.tail()}")
        raise
    finally:
        for replica in w.replicas:
            replica.stop()
        w.downstream.stop()
        w.redis.stop(save=False)


def test_every_event_is_accounted_for_through_app_redis_and_replica_failures(
    world: World,
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = world.replicas
    factory = EventFactory(world.keys, SEED)
    kinds = iter(factory.mix(MAX_EVENTS))
    timeline: list[tuple[float, str]] = []
    began = time.monotonic()
    faults_done: list[float] = []
    kill_at: list[float] = []
    redis_down: list[float] = []

    def mark(what: str) -> float:
        now = time.monotonic()
        timeline.append((now - began, what))
        return now

    async def faults() -> None:
        await asyncio.sleep(0.6)
        await asyncio.to_thread(world.downstream.stop)
        mark("(a) application stopped")
        await asyncio.sleep(1.2)
        await asyncio.to_thread(world.downstream.start)
        mark("(a) application started")
        await asyncio.sleep(0.6)
        await asyncio.to_thread(world.redis.stop, save=True)
        redis_down.append(mark("(b) redis-server stopped"))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(world.redis.start)
        redis_down.append(mark("(b) redis-server started"))
        # Both replicas ready and their buffers (events decided meanwhile) written: a kill
        # now must not be what loses them (docs/operations.md, "Redis down").
        await asyncio.to_thread(
            wait_for, lambda: a.settled() and b.settled(), "replicas settled after Redis", 20
        )
        mark("    both replicas ready, write buffers empty")
        await asyncio.sleep(0.4)
        await asyncio.to_thread(a.kill)
        kill_at.append(mark("(c) replica a killed (SIGKILL)"))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(a.wait_ready)
        mark("(c) replica a started again and ready")
        await asyncio.sleep(0.3)
        faults_done.append(mark("load stops"))

    async def scenario() -> list[Event]:
        client = ProviderClient([(a.name, a.url), (b.name, b.url)], concurrency=8, seed=SEED)
        try:
            fault_task = asyncio.create_task(faults())
            events = await client.run(
                lambda: next(kinds),
                rate_per_s=RATE_PER_S,
                until=lambda: bool(faults_done) or fault_task.done(),
                max_events=MAX_EVENTS,
            )
            await fault_task  # raises what went wrong with a fault, if anything did
            return events
        finally:
            await client.aclose()

    events = asyncio.run(scenario())
    mark(f"every event answered ({len(events)} events)")
    wait_for(lambda: a.settled() and b.settled(), "replicas settled at the end", 20)

    delivered_ids = [r.header("x-sendergate-event-id") or "" for r in world.app.requests]
    quarantined = {e["id"] for e in events_with_outcome(b.url, "quarantined")}
    forwarded = {e["id"] for e in events_with_outcome(b.url, "forwarded")}
    failed = {e["id"] for e in events_with_outcome(b.url, "forward_failed")}
    acc = account(events, delivered_ids, quarantined)

    # Delivered events are recorded "forwarded", except the few a SIGKILL took from the
    # killed replica's write buffer (up to 200 ms of them) before it could write them.
    delivered = [e for e in events if e.allowed and e not in acc.lost]
    unrecorded = [e for e in delivered if e.eid not in forwarded]
    stale = [e for e in unrecorded if e.eid in failed]
    crash_window = [
        e
        for e in unrecorded
        if e.answer is not None and e.answer.replica == a.name and e.answer.at <= kill_at[0]
    ]
    in_outage = [e for e in events if redis_down[0] <= e.attempts[0].at <= redis_down[1]]

    title = (
        f"reliability accounting: {len(events)} signed webhooks, 2 replicas on Redis, seed {SEED}"
    )
    report = "\n".join(
        [
            acc.table(title),
            f"sent while Redis was down: {len(in_outage)}; delivered but not recorded "
            f"(killed replica's buffer): {len(crash_window)}; recorded forward_failed "
            f"although delivered (a late write from another replica): {len(stale)}",
            "timeline:",
            *(f"  {t:6.2f} s  {what}" for t, what in timeline),
        ]
    )
    record_property("accounting", report)
    with capsys.disabled():
        print("\n" + report)

    def show(found: list[Event]) -> list[tuple[str, bool, list[tuple[str, int | None]]]]:
        return [(e.kind, e.allowed, [(x.replica, x.status) for x in e.attempts]) for e in found]

    assert acc.total.sent == len(events) > 100
    assert acc.lost == [], show(acc.lost)
    assert acc.leaked == [], show(acc.leaked)
    assert acc.wrong_answer == [], show(acc.wrong_answer)
    assert acc.total.delivered + acc.total.quarantined == acc.total.sent
    # Duplicates only where an answer was lost on the way (at-least-once), never else.
    assert all(e.lost_an_answer for e in acc.duplicated), show(acc.duplicated)
    unexplained = {e.eid for e in unrecorded} - {e.eid for e in stale + crash_window}
    assert not unexplained, show([e for e in unrecorded if e.eid in unexplained])
    # The faults were felt: 502 while the application was down, connection errors from
    # the killed replica; and traffic went on during the Redis outage.
    assert acc.attempts["502"] > 0, acc.attempts
    assert sum(n for k, n in acc.attempts.items() if not k.isdigit()) > 0, acc.attempts
    assert in_outage
    assert acc.total.retried_delivered > 0
