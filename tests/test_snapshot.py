"""The snapshot holder (gateway/snapshot.py): incremental reloads on both stores.

Each test takes the ``store`` fixture (an opened, empty SQLite or Redis store) and checks
the holder against the plain truth: ``compile_rules`` of a full ``snapshot_rules`` read,
compared by decisions over a fixed set of events, and by counts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.errors import DuplicateRule, StoreUnavailable
from gateway.models import (
    ACTIONS,
    ORG_MAIL,
    ORG_PHONE,
    ORG_SCOPES,
    Action,
    Family,
    MatchType,
    NewRule,
    Sender,
    Target,
    TargetKind,
)
from gateway.rules import RuleSet, compile_rules, decide
from gateway.settings import Settings, StoreSettings
from gateway.snapshot import SnapshotHolder
from gateway.store.base import RuleFilter, Store

T0 = datetime(2025, 3, 4, tzinfo=UTC)
NOW = T0.timestamp()
MAILBOXES = ("a@ours.example", "b@ours.example", "c@ours.example")
NUMBERS = ("+14155550100", "+14155550101")
DOMAINS = ("spam.example", "x.spam.example", "ok.example", "example")
SENDERS: tuple[tuple[Sender, Family], ...] = (
    *(
        (Sender("email", f"{local}@{d}", f"{local}@{d}", domain=d), "mail")
        for local in ("u", "v")
        for d in DOMAINS
    ),
    *((Sender("phone", n, n), "phone") for n in ("+19005550000", "+19005551234", "+1415999")),
    (Sender("anonymous", "anonymous", ""), "phone"),
)
PREFIXES = ("+1900", "+190055512", "+1", "+1415999")
RECIPIENTS = (*MAILBOXES, "d@ours.example", "nobody@ours.example", *NUMBERS, "+14155550199")


def _settings() -> Settings:
    return Settings(store=StoreSettings(poll_interval_s=0.05))


def _kind(target_id: str) -> TargetKind:
    return "mailbox" if "@" in target_id else "number"


def _target(target_id: str, **changes: Any) -> Target:
    target = Target(_kind(target_id), target_id, "blacklist", True, T0, T0)
    return dataclasses.replace(target, **changes)


def _rule(scope: str, match_type: MatchType, target: str, action: Action = "block") -> NewRule:
    return NewRule(scope=scope, action=action, match_type=match_type, match_target=target)


async def _truth(store: Store) -> RuleSet:
    version, targets, rows = await store.snapshot_rules()
    return compile_rules(targets, rows, version=version)


async def _assert_current(holder: SnapshotHolder, store: Store) -> None:
    """The holder's snapshot decides exactly as a full load of the store would."""
    got = holder.current
    assert got is not None
    want = await _truth(store)
    assert got.version == want.version == await store.version()
    assert got.rule_count == want.rule_count
    assert got.target_count == want.target_count
    for recipient in RECIPIENTS:
        assert got.target(recipient) == want.target(recipient)
        for sender, family in SENDERS:
            assert decide(got, sender, recipient, family, now=NOW) == decide(
                want, sender, recipient, family, now=NOW
            )


async def _seed(store: Store) -> None:
    for tid in (*MAILBOXES, *NUMBERS):
        await store.create_target(_target(tid))
    await store.create_rules(
        [
            _rule(MAILBOXES[0], "domain", "spam.example"),
            _rule(MAILBOXES[1], "exact_email", "u@ok.example", "mute"),
            _rule(ORG_MAIL, "domain", "example", "block"),
            _rule(ORG_PHONE, "number_prefix", "+1900"),
            _rule(NUMBERS[0], "number_prefix", "+190055512", "allow"),
        ]
    )


async def _wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_reload_reads_only_the_scopes_that_changed(store: Store) -> None:
    """After the first (full) load, rule and target writes are applied incrementally:
    the untouched scopes' compiled data is shared, the result equals a full load."""
    await _seed(store)
    holder = SnapshotHolder(store, _settings())
    first = await holder.reload()
    assert (holder.full_reloads, holder.incremental_reloads) == (1, 0)
    await _assert_current(holder, store)

    rule = await store.create_rule(_rule(MAILBOXES[2], "domain", "ok.example"))
    second = await holder.reload()
    assert (holder.full_reloads, holder.incremental_reloads) == (1, 1)
    await _assert_current(holder, store)
    # Untouched scopes are the very same objects.
    for scope in (MAILBOXES[0], ORG_MAIL, ORG_PHONE, NUMBERS[0]):
        assert second._scopes[scope] is first._scopes[scope]

    await store.update_target("mailbox", MAILBOXES[2], {"filter_mode": "whitelist"})
    await holder.reload()
    await store.update_target("number", NUMBERS[0], {"enforce": False})
    await holder.reload()
    await store.update_rule(rule.id, {"action": "mute"})
    await holder.reload()
    await store.create_rule(_rule(ORG_MAIL, "domain", "ok.example", "allow"))
    await holder.reload()
    await store.delete_target("mailbox", MAILBOXES[0])
    await holder.reload()
    await store.create_target(_target("d@ours.example", filter_mode="whitelist"))
    await holder.reload()
    await _assert_current(holder, store)
    assert holder.full_reloads == 1
    assert holder.incremental_reloads == 7

    # Nothing changed: the same snapshot.
    same = holder.current
    assert await holder.reload() is same


async def test_notify_with_scopes_reloads_incrementally(store: Store) -> None:
    """An invalidation naming its scopes wakes the poller, which reads only those; one
    that skips a version (a lost message) is completed from the store's change log."""
    await _seed(store)
    holder = SnapshotHolder(store, _settings())
    await holder.reload()
    task = asyncio.create_task(holder.run(60))  # no polling: only notifications
    try:
        await store.create_rule(_rule(NUMBERS[1], "exact_number", "+1415999"))
        version = await store.version()
        holder.notify(version, [NUMBERS[1]])
        await _wait_for(lambda: holder.current is not None and holder.current.version == version)
        await _assert_current(holder, store)

        # Two writes, only the second heard of: the first comes from the log.
        await store.create_rule(_rule(MAILBOXES[1], "domain", "spam.example", "allow"))
        await store.create_rule(_rule(ORG_PHONE, "anonymous", "anonymous"))
        version = await store.version()
        holder.notify(version, [ORG_PHONE])
        await _wait_for(lambda: holder.current is not None and holder.current.version == version)
        await _assert_current(holder, store)

        # A message without scopes: the log says which.
        await store.update_target("mailbox", MAILBOXES[1], {"filter_mode": "whitelist"})
        version = await store.version()
        holder.notify(version, None)
        await _wait_for(lambda: holder.current is not None and holder.current.version == version)
        await _assert_current(holder, store)

        # After a reconnection: compare.
        await store.create_rule(_rule(MAILBOXES[2], "invalid", "invalid"))
        version = await store.version()
        holder.notify(None)
        await _wait_for(lambda: holder.current is not None and holder.current.version == version)
        await _assert_current(holder, store)

        # Old news is ignored.
        before = holder.reloads
        holder.notify(version - 1, [MAILBOXES[0]])
        await asyncio.sleep(0.05)
        assert holder.reloads == before
        assert holder.full_reloads == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_poller_catches_up_without_notifications(store: Store) -> None:
    """With no invalidations at all (SQLite, another process writing), the poller asks
    the change log every interval and reloads only what changed."""
    await _seed(store)
    holder = SnapshotHolder(store, _settings())
    await holder.reload()
    task = asyncio.create_task(holder.run(0.02))
    try:
        await store.create_rule(_rule(MAILBOXES[0], "exact_email", "v@ok.example"))
        await store.create_rule(_rule(ORG_MAIL, "domain", "x.spam.example", "mute"))
        version = await store.version()
        await _wait_for(lambda: holder.current is not None and holder.current.version == version)
        await _assert_current(holder, store)
        assert holder.full_reloads == 1 and holder.incremental_reloads >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_full_reload_when_the_log_cannot_say(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the change log does not reach back far enough (or the store went back), the
    holder reloads everything."""
    await _seed(store)
    holder = SnapshotHolder(store, _settings())
    await holder.reload()

    async def no_log(since: int) -> None:
        return None

    monkeypatch.setattr(store, "changed_scopes", no_log)
    await store.create_rule(_rule(MAILBOXES[0], "domain", "ok.example"))
    await holder.reload()
    assert holder.full_reloads == 2 and holder.incremental_reloads == 0
    await _assert_current(holder, store)


async def test_a_store_error_half_way_keeps_what_was_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store fails between two reads of one refresh, what was read is swapped in
    under the version up to which it is complete, and the next refresh finishes."""
    await _seed(store)
    holder = SnapshotHolder(store, _settings())
    base = (await holder.reload()).version
    await store.create_rule(_rule(MAILBOXES[0], "exact_email", "v@ok.example"))  # unheard
    await store.create_rule(_rule(NUMBERS[1], "exact_number", "+1415999"))
    real = store.scope_rules
    calls = 0

    async def failing_second_time(scopes: list[str]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreUnavailable("store went away")
        return await real(scopes)

    monkeypatch.setattr(store, "scope_rules", failing_second_time)
    holder.notify(base + 2, [NUMBERS[1]])
    with pytest.raises(StoreUnavailable):
        await holder._refresh(compare=False)
    half = holder.current
    assert half is not None and half.version == base  # the unheard write is not in yet
    caller = Sender("phone", "+1415999", "+1415999")
    assert decide(half, caller, NUMBERS[1], "phone", now=NOW).verdict == "drop"
    monkeypatch.setattr(store, "scope_rules", real)
    await holder.reload([MAILBOXES[0]])
    await _assert_current(holder, store)
    assert holder.full_reloads == 1


async def test_full_reload_for_a_write_of_many_scopes(store: Store) -> None:
    """A batch that changed more scopes than the log lists (or than ``max_scopes``) is
    loaded in full."""
    await _seed(store)
    holder = SnapshotHolder(store, _settings(), max_scopes=8)
    await holder.reload()
    await store.create_rules(
        [_rule(f"m{i}@ours.example", "domain", "spam.example") for i in range(300)]
    )
    await holder.reload()
    assert holder.full_reloads == 2
    await store.create_rules(
        [_rule(f"n{i}@ours.example", "domain", "spam.example") for i in range(9)]
    )
    await holder.reload()
    assert holder.full_reloads == 3
    await store.create_rules(
        [_rule(f"n{i}@ours.example", "domain", "ok.example") for i in range(8)]
    )
    await holder.reload()
    assert holder.full_reloads == 3 and holder.incremental_reloads == 1
    await _assert_current(holder, store)


async def test_a_large_scope_is_patched_rule_by_rule(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few rules changed in a large scope (an org list) are read by id and patched in;
    a small scope is read whole; a batch of more rules than the change log lists makes
    the large scope read whole, which for scopes holding most rules is a full reload."""
    await store.create_rules(
        [_rule(ORG_MAIL, "domain", f"d{i}.example") for i in range(1200)]
        + [_rule(MAILBOXES[0], "domain", f"d{i}.example") for i in range(3)]
    )
    holder = SnapshotHolder(store, _settings())
    await holder.reload()
    reads: list[str] = []
    scope_rules, rule_states = store.scope_rules, store.rule_states

    async def scope_read(scopes: list[str]) -> Any:
        reads.append(f"scopes {','.join(scopes)}")
        return await scope_rules(scopes)

    async def rule_read(ids: list[int]) -> Any:
        reads.append(f"{len(ids)} rules")
        return await rule_states(ids)

    monkeypatch.setattr(store, "scope_rules", scope_read)
    monkeypatch.setattr(store, "rule_states", rule_read)

    await store.create_rule(_rule(MAILBOXES[0], "domain", "spam.example"))
    await holder.reload()
    assert reads == [f"scopes {MAILBOXES[0]}"]
    spam = await store.create_rule(_rule(ORG_MAIL, "domain", "spam.example"))
    await holder.reload()
    await store.update_rule(spam.id, {"action": "mute"})
    first = (await store.list_rules(RuleFilter(scopes=(ORG_MAIL,)), limit=1, offset=5))[0][0]
    await store.delete_rule(first.id)
    await holder.reload()
    assert reads[1:] == ["1 rules", "2 rules"]
    assert (holder.full_reloads, holder.incremental_reloads) == (1, 3)
    await _assert_current(holder, store)
    email = Sender("email", "x@spam.example", "x@spam.example", domain="spam.example")
    assert decide(_current(holder), email, MAILBOXES[1], "mail", now=NOW).verdict == "mute"

    await store.create_rules([_rule(ORG_MAIL, "domain", f"e{i}.example") for i in range(200)])
    await holder.reload()
    assert (holder.full_reloads, holder.incremental_reloads) == (2, 3)
    await _assert_current(holder, store)


def _current(holder: SnapshotHolder) -> RuleSet:
    assert holder.current is not None
    return holder.current


async def test_incremental_off_reloads_everything(store: Store) -> None:
    """``[store] incremental_reload = false``: every change is a full reload."""
    await _seed(store)
    settings = Settings(store=StoreSettings(incremental_reload=False))
    holder = SnapshotHolder(store, settings)
    await holder.reload()
    await store.create_rule(_rule(MAILBOXES[0], "domain", "ok.example"))
    await holder.reload()
    assert (holder.full_reloads, holder.incremental_reloads) == (2, 0)
    await _assert_current(holder, store)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_writes_and_lossy_notifications_converge(store: Store, seed: int) -> None:
    """Random target and rule writes; their notifications are dropped, delayed, reordered
    or stripped of scopes at random; the poller runs meanwhile. Whenever the holder has
    reached the store's version it decides as a full load does, and it never needed a
    full reload."""
    rng = random.Random(seed)
    await _seed(store)
    # Org lists large enough to be patched rule by rule.
    await store.create_rules(
        [_rule(ORG_MAIL, "exact_email", f"f{i}@filler.example") for i in range(40)]
        + [_rule(ORG_PHONE, "exact_number", f"+1800555{i:04d}") for i in range(40)]
    )
    holder = SnapshotHolder(store, _settings())
    await holder.reload()
    task = asyncio.create_task(holder.run(0.03))
    scopes = (*MAILBOXES, "d@ours.example", *NUMBERS, ORG_MAIL, ORG_PHONE)
    delayed: list[tuple[int, Any]] = []
    try:
        for step in range(40):
            scope = rng.choice(scopes)
            change: Any = [scope]  # what the notification says: the scope, or its rules
            mail = scope == ORG_MAIL or "@" in scope
            exists = scope in ORG_SCOPES or await store.get_target(_kind(scope), scope) is not None
            if not exists:
                await store.create_target(_target(scope))
            elif scope in ORG_SCOPES or rng.random() < 0.7:
                action = rng.choice(ACTIONS)
                if mail:
                    rule = _rule(scope, "domain", rng.choice(DOMAINS), action)
                else:
                    rule = _rule(scope, "number_prefix", rng.choice(PREFIXES), action)
                (result,) = await store.create_rules([rule])
                if isinstance(result, DuplicateRule):  # change the slot's holder instead
                    status = rng.choice(("active", "paused", "deleted"))
                    await store.update_rule(result.existing_rule_id, {"status": status})
                    rule_id = result.existing_rule_id
                else:
                    rule_id = result.id
                if rng.random() < 0.5:
                    change = {scope: (rule_id,)}
            elif rng.random() < 0.7:
                mode = rng.choice(("blacklist", "whitelist"))
                changes = {"filter_mode": mode, "enforce": rng.random() < 0.7}
                await store.update_target(_kind(scope), scope, changes)
            else:
                await store.delete_target(_kind(scope), scope)
            version = await store.version()
            fate = rng.random()
            if fate < 0.5:
                holder.notify(version, change)
            elif fate < 0.6:
                holder.notify(version, None)
            elif fate < 0.8:
                delayed.append((version, change))
            # else: lost
            if delayed and rng.random() < 0.3:
                rng.shuffle(delayed)
                holder.notify(*delayed.pop())
            if step % 5 == 4:
                await _wait_for(lambda v=version: _version(holder) >= v)  # type: ignore[misc]
                if _version(holder) == await store.version():
                    await _assert_current(holder, store)
        final = await store.version()
        await _wait_for(lambda: _version(holder) == final)
        await _assert_current(holder, store)
        assert holder.full_reloads == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _version(holder: SnapshotHolder) -> int:
    return -1 if holder.current is None else holder.current.version
