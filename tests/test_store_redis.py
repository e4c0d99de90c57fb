"""What the Redis store promises beyond the shared contract, against a real redis-server:
the same answers as the SQLite reference store for the same writes, the slot rule held
across processes, invalidations published with every write and heard again after a
reconnect, a large snapshot read in batches, "Redis is down" answered quickly as
``StoreUnavailable``, and recovery after a Redis restart."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import DuplicateRule, StoreUnavailable
from gateway.models import ORG_MAIL, ORG_PHONE, NewRule, Rule, Target, TargetKind
from gateway.store.base import (
    Change,
    ContactDelta,
    ContactFilter,
    EventFilter,
    EventRecord,
    NewAudit,
    RuleFilter,
)
from gateway.store.redis import RedisStore, redact_url, scopes_of
from gateway.store.sqlite import SQLiteStore
from tests.conftest import fresh_prefix
from tests.redis_support import RedisServer, free_port, require_redis_server

pytestmark = pytest.mark.redis

T0 = datetime(2025, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class SteppedClock:
    """A clock both stores share, moved on between operations (not between the two
    stores' calls), so that their timestamps (and orders) agree."""

    def __init__(self, rng: random.Random) -> None:
        self.now = T0
        self._rng = rng

    def step(self) -> None:
        self.now += timedelta(microseconds=self._rng.choice([0, 1, 250]))  # ties on purpose

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url, key_prefix=fresh_prefix())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _rule(target: str, scope: str = ORG_MAIL, **kw: Any) -> NewRule:
    return NewRule(
        scope=scope,
        action=kw.pop("action", "block"),
        match_type=kw.pop("match_type", "domain"),
        match_target=target,
        **kw,
    )


def _event(event_id: str, at: datetime, rng: random.Random) -> EventRecord:
    return EventRecord(
        id=event_id,
        source=rng.choice(["tw", "mg"]),
        provider="twilio",
        channel="sms",
        provider_event_id=rng.choice([None, f"SM{rng.randrange(5)}"]),
        sender=rng.choice(["+1800", "+1900", "+1700"]),
        envelope_sender=None,
        recipient=rng.choice(["+14155550100", "+14155550101", "+14155550102"]),
        verdict=rng.choice(["deliver", "mute", "drop"]),
        rule=rng.choice([None, 1, 2]),
        reason="rule",
        mode="blacklist",
        would_drop=False,
        unauthenticated_allow=False,
        outcome=rng.choice(["forwarded", "quarantined", "forward_failed"]),
        received_at=at,
        method="POST",
        path="/hooks/tw",
        query="",
        content_type="application/x-www-form-urlencoded",
        headers=(("x-a", "1"),),
        body=rng.randbytes(8),
        response_body=rng.choice([None, b"<Response/>"]),
    )


def _comparable(value: Any) -> Any:
    """Exceptions do not compare equal: a DuplicateRule becomes the id it carries."""
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, DuplicateRule):
        return ("duplicate", value.existing_rule_id)
    return value


async def test_redis_answers_like_the_sqlite_store(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The same random writes on both stores give the same answers: rules under every
    filter and page, targets, the snapshot, events under filters and cursors, contacts
    under every sort, and the audit log. SQLite is the reference."""
    rng = random.Random(4)
    clock = SteppedClock(random.Random(5))
    sqlite = SQLiteStore(str(tmp_path / "ref.db"), clock=clock)
    redis = RedisStore(redis_server.url, key_prefix=fresh_prefix(), clock=clock)
    stores: tuple[Any, Any] = (sqlite, redis)
    for store in stores:
        await store.open()

    async def both(method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on both stores at the same clock reading; the answers (or the
        duplicate each raises) must be equal."""
        clock.step()
        answers = []
        for store in stores:
            try:
                answers.append(_comparable(await getattr(store, method)(*args, **kwargs)))
            except DuplicateRule as exc:
                answers.append(_comparable(exc))
        assert answers[0] == answers[1], method
        return answers[0]

    try:
        scopes = [ORG_MAIL, ORG_PHONE, "a@acme.example", "b@acme.example", "+14155550100"]
        targets = scopes[2:]
        for scope in targets:
            kind: TargetKind = "number" if scope.startswith("+") else "mailbox"
            at = T0 + timedelta(seconds=rng.choice([0, 1]))  # ties in the target listing
            await both("create_target", Target(kind, scope, "blacklist", True, at, at))
        for i in range(300):
            op = rng.random()
            scope = rng.choice(scopes)
            phone = scope in (ORG_PHONE, "+14155550100")
            some_rule = rng.randrange(1, i + 2)
            if op < 0.55:
                target = (
                    f"+1{rng.randrange(900, 930)}" if phone else f"d{rng.randrange(40)}.example"
                )
                new = _rule(
                    target,
                    scope,
                    match_type="number_prefix" if phone else "domain",
                    action=rng.choice(["allow", "block", "mute"]),
                    status=rng.choice(["active", "active", "paused"]),
                    note=rng.choice([None, "", "n"]),
                    expires_at=rng.choice([None, T0 + timedelta(days=1)]),
                )
                await both("create_rules", [new])
            elif op < 0.75:
                changes = rng.choice(
                    [
                        {"status": "deleted"},
                        {"status": "active"},
                        {"action": "allow"},
                        {"note": None},
                        {"expires_at": None},
                        {"status": "paused", "note": "x"},
                    ]
                )
                await both("update_rule", some_rule, changes)
            elif op < 0.85:
                await both("delete_rule", some_rule)
            elif op < 0.9:
                await both("add_rule_hits", {some_rule: (rng.randrange(1, 4), clock())})
            elif op < 0.92 and scope in targets:
                kind = "number" if scope.startswith("+") else "mailbox"
                await both("delete_target", kind, scope)
                await both("create_target", Target(kind, scope, "whitelist", False, T0, T0))
            else:
                changes = {"enforce": False, "rate_limit": "5/minute", "forward_url": None}
                await both("update_target", "mailbox", rng.choice(targets[:2]), changes)
        # The walk reached every state: live, deleted and restored rules.
        _, live = await sqlite.list_rules(RuleFilter(), limit=1, offset=0)
        _, deleted = await sqlite.list_rules(RuleFilter(status="deleted"), limit=1, offset=0)
        assert live > 20 and deleted > 5
        for flt in [
            RuleFilter(),
            RuleFilter(status="deleted"),
            RuleFilter(status="active"),
            RuleFilter(status="paused"),
            RuleFilter(scopes=("a@acme.example",)),
            RuleFilter(scopes=("a@acme.example", ORG_MAIL), action="block"),
            RuleFilter(scopes=(ORG_PHONE,), status="deleted"),
            RuleFilter(family="phone"),
            RuleFilter(match_type="domain", match_target="d3.example"),
        ]:
            for limit, offset in ((500, 0), (7, 0), (7, 14), (3, 1000)):
                await both("list_rules", flt, limit=limit, offset=offset)
        for kind in ("mailbox", "number"):
            await both("list_targets", kind, limit=10, offset=0)
            await both("list_targets", kind, limit=1, offset=1)
        await both("list_targets", "mailbox", ids=["b@acme.example", "x@y"], limit=5, offset=0)
        _, targets_sqlite, rows_sqlite = await sqlite.snapshot_rules()
        _, targets_redis, rows_redis = await redis.snapshot_rules()
        assert targets_redis == targets_sqlite
        assert sorted(rows_redis) == sorted(rows_sqlite)

        base = T0 + timedelta(minutes=1)
        events = [
            _event(f"e{i:03d}", base + timedelta(seconds=rng.randrange(20)), rng)
            for i in range(120)
        ]
        for start in range(0, len(events), 25):
            await both("put_events", events[start : start + 25])
        await both("put_events", [dataclasses.replace(e, outcome="released") for e in events[::7]])
        for eflt in [
            EventFilter(),
            EventFilter(verdict="drop"),
            EventFilter(target="+14155550101", outcome="released"),
            EventFilter(targets=("+14155550100", "+14155550102"), sender="+1800"),
            EventFilter(sender="+1900", verdict="mute", since=base + timedelta(seconds=5)),
        ]:
            for limit in (1, 6, 500):
                cursor: str | None = None
                for _ in range(200):
                    _, cursor = await both("list_events", eflt, cursor=cursor, limit=limit)
                    if cursor is None:
                        break
                assert cursor is None
        assert await both("purge_events", base + timedelta(seconds=10)) > 0
        await both("list_events", EventFilter(), cursor=None, limit=500)

        deltas = []
        for _ in range(60):
            n = rng.randrange(1, 4)
            deltas.append(
                ContactDelta(
                    scope=rng.choice([*targets[:2], ORG_MAIL]),
                    sender=f"u{rng.randrange(8)}@d{rng.randrange(3)}.example",
                    family="mail",
                    count=n,
                    delivered=n,
                    muted=0,
                    dropped=0,
                    first_seen=base + timedelta(seconds=rng.randrange(5)),
                    last_seen=base + timedelta(seconds=rng.randrange(5, 9)),
                )
            )
        for start in range(0, len(deltas), 10):
            await both("add_contacts", deltas[start : start + 10])
        await both("create_rules", [_rule("u1@d1.example", ORG_MAIL, match_type="exact_email")])
        for cflt in [
            ContactFilter(),
            ContactFilter(scopes=("a@acme.example",)),
            ContactFilter(scopes=("a@acme.example", ORG_MAIL)),
            ContactFilter(family="mail"),
            ContactFilter(family="phone"),
            ContactFilter(state="blocked"),
            ContactFilter(state="unset", scopes=(ORG_MAIL,)),
        ]:
            for sort in ("count", "last_seen", "first_seen"):
                for descending in (True, False):
                    for limit, offset in ((100, 0), (4, 3)):
                        await both(
                            "list_contacts",
                            cflt,
                            sort=sort,
                            descending=descending,
                            limit=limit,
                            offset=offset,
                        )
        await both("set_contact_category", ORG_MAIL, "u1@d1.example", "vip")

        audit = [
            NewAudit(
                at=base + timedelta(seconds=rng.randrange(4)),
                actor=rng.choice(["ops", "config"]),
                action="rule.create",
                scope=rng.choice([None, ORG_MAIL, "a@acme.example"]),
                rule_id=rng.choice([None, 3]),
                before=None,
                after={"id": 3, "nested": [1, "x"]},
            )
            for _ in range(30)
        ]
        await both("add_audit", audit)
        for kw in ({}, {"scope": ORG_MAIL}, {"actor": "ops"}, {"scope": ORG_MAIL, "actor": "ops"}):
            for limit, offset in ((100, 0), (3, 2)):
                await both("list_audit", **kw, limit=limit, offset=offset)
    finally:
        for store in stores:
            await store.close()


async def test_the_slot_rule_holds_across_replicas(redis_server: RedisServer) -> None:
    """Two replicas (two stores, two connection pools) racing to create the same rules:
    each slot is won once, and every loser is told the winner's id."""
    prefix = fresh_prefix()
    replicas = [RedisStore(redis_server.url, key_prefix=prefix) for _ in range(2)]
    for replica in replicas:
        await replica.open()
    try:
        attempts = [
            replica.create_rule(_rule(f"race{i}.example"))
            for i in range(20)
            for replica in replicas
            for _ in range(3)
        ]
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        winners = [o for o in outcomes if isinstance(o, Rule)]
        losers = [o for o in outcomes if isinstance(o, DuplicateRule)]
        assert len(winners) == 20 and len(losers) == 100
        by_target = {w.match_target: w.id for w in winners}
        assert len(by_target) == 20
        assert {loser.existing_rule_id for loser in losers} == set(by_target.values())
        assert len({w.id for w in winners}) == 20  # ids from one INCR: never shared
    finally:
        for replica in replicas:
            await replica.close()


async def test_every_write_publishes_its_version_and_scopes(redis_store: RedisStore) -> None:
    """Each target or rule write publishes the new version and the scope it changed;
    failed writes, hits, events and contacts publish nothing."""
    client = redis_store._redis()
    pubsub = client.pubsub()
    await pubsub.subscribe(redis_store.channel)
    subscribed = await pubsub.get_message(timeout=2)
    assert subscribed is not None and subscribed["type"] == "subscribe"

    async def published() -> list[tuple[int, tuple[str, ...]]]:
        seen = []
        while (message := await pubsub.get_message(timeout=0.2)) is not None:
            data = message["data"]
            seen.append((int(json.loads(data)["version"]), scopes_of(data)))
        return seen

    mailbox = Target("mailbox", "a@acme.example", "blacklist", True, T0, T0)
    await redis_store.create_target(mailbox)
    rule = await redis_store.create_rule(_rule("spam.example", "a@acme.example"))
    await redis_store.update_rule(rule.id, {"note": "n"})
    await redis_store.create_rules(
        [_rule("x.example"), _rule("+1900", ORG_PHONE, match_type="number_prefix")]
    )
    await redis_store.update_target("mailbox", "a@acme.example", {"enforce": False})
    await redis_store.delete_rule(rule.id)
    await redis_store.delete_target("mailbox", "a@acme.example")
    messages = await published()
    assert [v for v, _ in messages] == list(range(1, 8))
    assert await redis_store.version() == 7
    assert [set(s) for _, s in messages] == [
        {"a@acme.example"},
        {"a@acme.example"},
        {"a@acme.example"},
        {ORG_MAIL, ORG_PHONE},
        {"a@acme.example"},
        {"a@acme.example"},
        {"a@acme.example"},
    ]
    with pytest.raises(DuplicateRule):
        await redis_store.create_rule(_rule("x.example"))
    await redis_store.add_rule_hits({1: (1, T0)})
    await redis_store.put_events([_event("e1", T0, random.Random(1))])
    await redis_store.delete_rule(rule.id)  # already deleted: no change
    assert await published() == []
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def _wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, which it may stop and start."""
    server = RedisServer(tmp_path / "redis", binary=require_redis_server())
    server.start()
    try:
        yield server
    finally:
        server.stop(save=False)


async def test_listener_hears_writes_and_resubscribes_after_a_restart(
    private_redis: RedisServer,
) -> None:
    """listen() reports None on subscribing, each write's version (with its scopes), None
    again after Redis restarts (messages sent meanwhile are lost, so the caller must
    compare), and the writes after that."""
    store = RedisStore(private_redis.url, key_prefix="gw:")
    writer = RedisStore(private_redis.url, key_prefix="gw:")
    await store.open()
    await writer.open()
    heard: list[int | None] = []
    scopes: list[Change | None] = []

    def on_change(version: int | None, changed: Change | None) -> None:
        heard.append(version)
        scopes.append(changed)

    task = asyncio.create_task(store.listen(on_change, retry_max_s=0.2))
    try:
        await _wait_until(lambda: heard == [None])
        assert store.subscribed
        await writer.create_rule(_rule("one.example"))
        await _wait_until(lambda: heard == [None, 1])
        assert scopes == [None, {ORG_MAIL: (1,)}]
        private_redis.stop(save=True)
        await _wait_until(lambda: not store.subscribed)
        private_redis.start()
        await _wait_until(lambda: heard[-1] is None and store.subscribed)
        await asyncio.sleep(0.6)  # the writer's fail-fast window after the outage
        await writer.create_rule(_rule("two.example"))
        await _wait_until(lambda: heard[-1] == 2)
        assert await store.version() == 2  # the data survived the (saving) restart
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()
        await writer.close()


async def test_snapshot_reads_a_large_rule_set_in_batches(redis_store: RedisStore) -> None:
    """A snapshot larger than one HSCAN batch comes back whole and only with active
    rules (batch creation, then a scan of several batches)."""
    total = 25_000
    for start in range(0, total, 1000):
        batch = [
            _rule(f"d{i}.example", status="paused" if i % 10 == 0 else "active")
            for i in range(start, start + 1000)
        ]
        await redis_store.create_rules(batch)
    began = time.perf_counter()
    version, _, rows = await redis_store.snapshot_rules()
    elapsed = time.perf_counter() - began
    print(f"\nsnapshot of {len(rows)} active rules: {elapsed * 1000:.0f} ms")
    assert version == 25
    assert len(rows) == total - total // 10
    assert len({row[0] for row in rows}) == len(rows)
    assert {row[4] for row in rows} == {f"d{i}.example" for i in range(total) if i % 10}


async def test_unreachable_redis_is_store_unavailable_and_fails_fast() -> None:
    """With nothing listening: ping and every call raise StoreUnavailable (the message
    names the host, never the password); after the first failure calls fail at once
    instead of trying to connect per call."""
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", key_prefix="x:")
    await store.open()
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert time.monotonic() - began < 2.5
        assert "hunter2" not in caught.value.detail and "127.0.0.1" in caught.value.detail
        began = time.monotonic()
        for _ in range(100):
            with pytest.raises(StoreUnavailable):
                await store.get_event("e1")
        assert time.monotonic() - began < 0.5
        with pytest.raises(StoreUnavailable):
            await store.create_rule(_rule("x.example"))
    finally:
        await store.close()


async def test_store_recovers_after_redis_restarts(private_redis: RedisServer) -> None:
    """While Redis is down calls raise StoreUnavailable; once it is back (with its data)
    the same store answers again, on fresh connections."""
    store = RedisStore(private_redis.url, key_prefix="gw:")
    await store.open()
    try:
        rule = await store.create_rule(_rule("kept.example"))
        private_redis.stop(save=True)
        with pytest.raises(StoreUnavailable):
            await store.get_rule(rule.id)
        with pytest.raises(StoreUnavailable):
            await store.ping()
        private_redis.start()
        await store.ping()  # a probe closes the fail-fast window
        assert await store.get_rule(rule.id) == rule
        assert await store.version() == 1
    finally:
        await store.close()


async def test_events_leave_no_stray_keys_after_replace_and_purge(redis_store: RedisStore) -> None:
    """Replacing an event moves it between indexes; purging every event leaves no event
    key or index behind (Redis drops empty sorted sets)."""
    rng = random.Random(2)
    events = [_event(f"e{i}", T0 + timedelta(seconds=i), rng) for i in range(50)]
    await redis_store.put_events(events)
    await redis_store.put_events(
        [dataclasses.replace(e, outcome="released", sender="+1555") for e in events]
    )
    page, _ = await redis_store.list_events(EventFilter(sender="+1800"), cursor=None, limit=100)
    assert page == []
    page, _ = await redis_store.list_events(EventFilter(outcome="released"), cursor=None, limit=100)
    assert len(page) == 50
    assert await redis_store.purge_events(T0 + timedelta(days=1)) == 50
    client = redis_store._redis()
    keys = [k async for k in client.scan_iter(match=f"{redis_store.prefix}*")]
    assert keys == []


async def test_key_prefixes_keep_gateways_apart(redis_server: RedisServer) -> None:
    """Two prefixes on one Redis are two independent stores."""
    one = RedisStore(redis_server.url, key_prefix=fresh_prefix())
    two = RedisStore(redis_server.url, key_prefix=fresh_prefix())
    for store in (one, two):
        await store.open()
    try:
        await one.create_rule(_rule("spam.example"))
        await two.create_rule(_rule("spam.example"))  # no duplicate across prefixes
        assert await one.version() == 1 and await two.version() == 1
        assert (await two.list_rules(RuleFilter(), limit=5, offset=0))[1] == 1
    finally:
        for store in (one, two):
            await store.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/0", "redis://***@h:1/0"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    """Logs and errors show the Redis URL without its password."""
    assert redact_url(url) == shown


def test_without_redis_server_the_tests_skip_except_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No redis-server binary: skipped with a reason locally, a failure under CI=true."""
    from tests import redis_support

    monkeypatch.setattr(redis_support, "find_redis_server", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        redis_support.require_redis_server()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the Redis tests"):
        redis_support.require_redis_server()


async def test_change_log_misses_a_version_written_without_it(redis_store: RedisStore) -> None:
    """A version bumped without a log entry (a replica of an older release writing) makes
    changed_scopes answer None for the versions around it: the reader loads everything
    rather than miss that write."""
    await redis_store.create_rule(_rule("one.example"))
    await redis_store._redis().incr(redis_store._key("version"))  # an unlogged write
    two = await redis_store.create_rule(_rule("two.example"))
    assert await redis_store.changed_scopes(0) is None
    assert await redis_store.changed_scopes(2) == (3, {3: {ORG_MAIL: (two.id,)}})


async def test_scope_rules_reads_a_scope_of_several_scan_pages(redis_store: RedisStore) -> None:
    """A scope larger than one ZSCAN page (an org list of many rules) comes back whole,
    without paused rules."""
    total = 23_000
    for start in range(0, total, 1000):
        batch = [
            _rule(f"d{i}.example", status="paused" if i % 10 == 0 else "active")
            for i in range(start, start + 1000)
        ]
        await redis_store.create_rules(batch)
    await redis_store.create_rule(_rule("+1900", ORG_PHONE, match_type="number_prefix"))
    version, targets, rows = await redis_store.scope_rules([ORG_MAIL])
    assert version == await redis_store.version() and targets == []
    assert list(rows) == [ORG_MAIL]
    assert len(rows[ORG_MAIL]) == total - total // 10
    assert {row[4] for row in rows[ORG_MAIL]} == {f"d{i}.example" for i in range(total) if i % 10}
    assert [row[0] for row in rows[ORG_MAIL]] == sorted(row[0] for row in rows[ORG_MAIL])


async def test_scope_rules_reads_again_when_writes_land_between_ranges(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scope read in several ranges, with writes landing between them (which could
    shift the ranks), is read again, and under constant writes scanned: the answer still
    holds every rule its version counts."""
    monkeypatch.setattr("gateway.store.redis._SCAN_COUNT", 10)
    await redis_store.create_rules([_rule(f"d{i}.example") for i in range(35)])
    script = redis_store._scripts["scope_rows"]
    late = 0

    async def writing_in_between(keys: Any, args: Any, client: Any = None) -> Any:
        nonlocal late
        if args[2] != 0:  # a later range: another replica writes first
            late += 1
            await redis_store.create_rule(_rule(f"late{late}.example"))
        return await script(keys=keys, args=args, client=client)

    monkeypatch.setitem(redis_store._scripts, "scope_rows", writing_in_between)
    version, _, rows = await redis_store.scope_rules([ORG_MAIL])
    assert late >= 3 * 3  # three attempts of three later ranges, then the scan
    assert version == await redis_store.version()
    _, _, everything = await redis_store.snapshot_rules()
    assert sorted(rows[ORG_MAIL]) == sorted(everything)
