"""The contract every ``Store`` backend passes (SPEC §5).

Each test takes the ``store`` fixture (``tests/conftest.py``): an opened, empty store,
parametrised over the backends. The tests use only the ``Store`` Protocol, so a new
backend runs them unchanged by adding itself to the fixture's params.
``tests/test_store_contract.py`` imports this module so that pytest collects it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.errors import BadRequest, Conflict, DuplicateRule
from gateway.models import (
    ORG_MAIL,
    ORG_PHONE,
    Action,
    Family,
    MatchType,
    NewRule,
    Rule,
    Status,
    Target,
    TargetKind,
)
from gateway.store.base import (
    Contact,
    ContactDelta,
    ContactFilter,
    ContactSort,
    EventFilter,
    EventRecord,
    NewAudit,
    RuleFilter,
    Store,
    StoredAnswer,
)
from tests.records import NUMBER as RECORDS_NUMBER
from tests.records import T0 as RECORDS_T0
from tests.records import event_record

T0 = RECORDS_T0
MAILBOX = "support@acme.example"
NUMBER = RECORDS_NUMBER


def _target(
    target_id: str = MAILBOX,
    kind: TargetKind = "mailbox",
    created_at: datetime = T0,
    **changes: Any,
) -> Target:
    target = Target(
        kind=kind,
        id=target_id,
        filter_mode="blacklist",
        enforce=True,
        created_at=created_at,
        updated_at=created_at,
    )
    return dataclasses.replace(target, **changes)


def _rule(
    match_target: str,
    scope: str = ORG_MAIL,
    match_type: MatchType = "domain",
    action: Action = "block",
    status: Status = "active",
    **changes: Any,
) -> NewRule:
    rule = NewRule(
        scope=scope,
        action=action,
        match_type=match_type,
        match_target=match_target,
        status=status,
    )
    return dataclasses.replace(rule, **changes)


def _event(event_id: str, received_at: datetime = T0, **changes: Any) -> EventRecord:
    return event_record(event_id, received_at, **changes)


def _is_aware_utc(value: datetime) -> bool:
    return value.utcoffset() == timedelta(0)


async def _create(store: Store, rule: NewRule) -> Rule:
    return await store.create_rule(rule)


# --- targets ---------------------------------------------------------------------------


async def test_ping_answers_on_an_open_store(store: Store) -> None:
    """An open store answers ping without raising."""
    await store.ping()


async def test_create_target_round_trips_every_field(store: Store) -> None:
    """A created number comes back from get_target with every field as written."""
    target = _target(
        NUMBER,
        "number",
        filter_mode="whitelist",
        enforce=False,
        voice_url="https://app.example/voice",
        sms_url="https://app.example/sms",
        rate_limit="10/minute",
    )
    assert await store.create_target(target) == target
    assert await store.get_target("number", NUMBER) == target
    mailbox = _target(forward_url="https://app.example/mail")
    await store.create_target(mailbox)
    assert await store.get_target("mailbox", MAILBOX) == mailbox


async def test_get_target_unknown_is_none(store: Store) -> None:
    """An unknown target, or a known id asked under the other kind, is None."""
    await store.create_target(_target())
    assert await store.get_target("mailbox", "nobody@acme.example") is None
    assert await store.get_target("number", MAILBOX) is None


async def test_create_target_twice_is_conflict(store: Store) -> None:
    """A second target with the same kind and id raises Conflict and changes nothing."""
    await store.create_target(_target())
    with pytest.raises(Conflict):
        await store.create_target(_target(filter_mode="whitelist"))
    found = await store.get_target("mailbox", MAILBOX)
    assert found is not None and found.filter_mode == "blacklist"


async def test_list_targets_newest_first_with_paging_and_total(store: Store) -> None:
    """list_targets pages newest first and reports the total of the kind."""
    ids = [f"user{i}@acme.example" for i in range(7)]
    for i, target_id in enumerate(ids):
        await store.create_target(_target(target_id, created_at=T0 + timedelta(seconds=i)))
    await store.create_target(_target(NUMBER, "number"))
    newest_first = list(reversed(ids))
    seen: list[str] = []
    for offset in (0, 3, 6):
        page, total = await store.list_targets("mailbox", limit=3, offset=offset)
        assert total == 7
        seen.extend(t.id for t in page)
    assert seen == newest_first
    page, total = await store.list_targets("mailbox", limit=3, offset=7)
    assert (page, total) == ([], 7)


async def test_list_targets_pages_ties_deterministically(store: Store) -> None:
    """Targets created at the same instant still page each exactly once."""
    ids = {f"same{i}@acme.example" for i in range(5)}
    for target_id in ids:
        await store.create_target(_target(target_id))
    seen = [
        t.id
        for offset in (0, 2, 4)
        for t in (await store.list_targets("mailbox", limit=2, offset=offset))[0]
    ]
    assert sorted(seen) == sorted(ids)


async def test_list_targets_ids_restricts_the_listing(store: Store) -> None:
    """``ids`` restricts the page and the total to those targets (none for an empty list)."""
    for i in range(4):
        await store.create_target(_target(f"u{i}@acme.example"))
    page, total = await store.list_targets(
        "mailbox", ids=["u1@acme.example", "u3@acme.example", "x@acme.example"], limit=10, offset=0
    )
    assert total == 2
    assert {t.id for t in page} == {"u1@acme.example", "u3@acme.example"}
    assert await store.list_targets("mailbox", ids=[], limit=10, offset=0) == ([], 0)


async def test_all_targets_lists_both_kinds(store: Store) -> None:
    """all_targets returns every mailbox and number."""
    await store.create_target(_target())
    await store.create_target(_target(NUMBER, "number"))
    assert {(t.kind, t.id) for t in await store.all_targets()} == {
        ("mailbox", MAILBOX),
        ("number", NUMBER),
    }


async def test_update_target_applies_changes_and_bumps_updated_at(store: Store) -> None:
    """update_target changes the given fields, keeps created_at and moves updated_at on."""
    await store.create_target(_target())
    updated = await store.update_target(
        "mailbox",
        MAILBOX,
        {"filter_mode": "whitelist", "enforce": False, "forward_url": "https://x.example/in"},
    )
    assert updated is not None
    assert (updated.filter_mode, updated.enforce, updated.forward_url) == (
        "whitelist",
        False,
        "https://x.example/in",
    )
    assert updated.created_at == T0
    assert updated.updated_at > T0 and _is_aware_utc(updated.updated_at)
    assert await store.get_target("mailbox", MAILBOX) == updated
    cleared = await store.update_target("mailbox", MAILBOX, {"forward_url": None})
    assert cleared is not None and cleared.forward_url is None


async def test_update_target_unknown_is_none(store: Store) -> None:
    """Updating a target that does not exist answers None."""
    assert await store.update_target("number", NUMBER, {"enforce": False}) is None


async def test_update_target_rejects_unknown_fields(store: Store) -> None:
    """A change to a field that is not a target setting raises ValueError."""
    await store.create_target(_target())
    with pytest.raises(ValueError, match="id"):
        await store.update_target("mailbox", MAILBOX, {"id": "other@acme.example"})


async def test_delete_target_marks_its_rules_deleted(store: Store) -> None:
    """Deleting a target removes it, marks its rules deleted (freeing their slots) and
    leaves other scopes alone; deleting it again answers False."""
    await store.create_target(_target())
    own = await _create(store, _rule("spam.example", scope=MAILBOX))
    org = await _create(store, _rule("spam.example"))
    assert await store.delete_target("mailbox", MAILBOX) is True
    assert await store.get_target("mailbox", MAILBOX) is None
    gone = await store.get_rule(own.id)
    assert gone is not None and gone.status == "deleted"
    kept = await store.get_rule(org.id)
    assert kept is not None and kept.status == "active"
    assert await store.delete_target("mailbox", MAILBOX) is False
    await _create(store, _rule("spam.example", scope=MAILBOX))


# --- rules ---------------------------------------------------------------------------------


async def test_create_rule_returns_the_numbered_rule(store: Store) -> None:
    """create_rule numbers the rule, starts its counters and get_rule returns the same."""
    expires = T0 + timedelta(days=30)
    new = _rule(
        "bob@spam.example",
        scope=MAILBOX,
        match_type="exact_email",
        action="mute",
        include_subdomains=False,
        expires_at=expires,
        note="asked by bob",
        source="cli",
    )
    rule = await store.create_rule(new)
    assert (rule.scope, rule.action, rule.match_type, rule.match_target) == (
        MAILBOX,
        "mute",
        "exact_email",
        "bob@spam.example",
    )
    assert (rule.include_subdomains, rule.status, rule.note, rule.source) == (
        False,
        "active",
        "asked by bob",
        "cli",
    )
    assert rule.expires_at == expires and _is_aware_utc(rule.expires_at)
    assert (rule.hits, rule.last_matched_at) == (0, None)
    assert _is_aware_utc(rule.created_at) and rule.updated_at == rule.created_at
    assert await store.get_rule(rule.id) == rule
    other = await store.create_rule(_rule("other.example"))
    assert other.id != rule.id


async def test_get_rule_unknown_is_none(store: Store) -> None:
    """An unknown rule id is None."""
    assert await store.get_rule(424242) is None


async def test_update_rule_changes_action_status_expiry_and_note(store: Store) -> None:
    """update_rule changes the mutable fields and moves updated_at on."""
    rule = await _create(store, _rule("spam.example", expires_at=T0))
    updated = await store.update_rule(
        rule.id, {"action": "allow", "status": "paused", "expires_at": None, "note": "ok"}
    )
    assert updated is not None
    assert (updated.action, updated.status, updated.expires_at, updated.note) == (
        "allow",
        "paused",
        None,
        "ok",
    )
    assert (updated.match_type, updated.match_target) == ("domain", "spam.example")
    assert updated.created_at == rule.created_at and updated.updated_at >= rule.updated_at
    assert await store.get_rule(rule.id) == updated
    later = T0 + timedelta(hours=1, microseconds=7)
    again = await store.update_rule(rule.id, {"expires_at": later})
    assert again is not None and again.expires_at == later


async def test_update_rule_unknown_is_none(store: Store) -> None:
    """Updating a rule that does not exist answers None."""
    assert await store.update_rule(424242, {"note": "x"}) is None


async def test_update_rule_rejects_unknown_fields(store: Store) -> None:
    """match_type and match_target never change: such a change raises ValueError."""
    rule = await _create(store, _rule("spam.example"))
    with pytest.raises(ValueError, match="match_target"):
        await store.update_rule(rule.id, {"match_target": "other.example"})


async def test_delete_rule_marks_it_deleted(store: Store) -> None:
    """delete_rule returns the rule marked deleted, and None for an unknown id."""
    rule = await _create(store, _rule("spam.example"))
    deleted = await store.delete_rule(rule.id)
    assert deleted is not None and deleted.status == "deleted" and deleted.id == rule.id
    assert await store.get_rule(rule.id) == deleted
    assert await store.delete_rule(424242) is None


async def test_duplicate_rule_names_the_existing_rule(store: Store) -> None:
    """A second rule for the same scope, match_type and match_target raises DuplicateRule
    carrying the id of the rule that holds the slot, whatever its action."""
    first = await _create(store, _rule("spam.example"))
    with pytest.raises(DuplicateRule) as caught:
        await store.create_rule(_rule("spam.example", action="allow"))
    assert caught.value.existing_rule_id == first.id


async def test_paused_rule_keeps_its_slot(store: Store) -> None:
    """A paused rule still holds its slot."""
    first = await _create(store, _rule("spam.example", status="paused"))
    with pytest.raises(DuplicateRule) as caught:
        await store.create_rule(_rule("spam.example"))
    assert caught.value.existing_rule_id == first.id


async def test_deleted_rule_frees_its_slot(store: Store) -> None:
    """After delete_rule the same rule can be created again, as a new rule."""
    first = await _create(store, _rule("spam.example"))
    await store.delete_rule(first.id)
    second = await store.create_rule(_rule("spam.example"))
    assert second.id != first.id


async def test_same_match_in_another_scope_is_not_a_duplicate(store: Store) -> None:
    """Uniqueness is per scope, and per match_type within a scope."""
    await _create(store, _rule("spam.example"))
    await _create(store, _rule("spam.example", scope=MAILBOX))
    await _create(store, _rule("+1900", scope=ORG_PHONE, match_type="number_prefix"))
    await _create(store, _rule("+1900", scope=ORG_PHONE, match_type="exact_number"))


async def test_restoring_a_deleted_rule_into_a_held_slot_is_duplicate(store: Store) -> None:
    """Un-deleting a rule whose slot another rule now holds raises DuplicateRule."""
    first = await _create(store, _rule("spam.example"))
    await store.delete_rule(first.id)
    second = await _create(store, _rule("spam.example"))
    with pytest.raises(DuplicateRule) as caught:
        await store.update_rule(first.id, {"status": "active"})
    assert caught.value.existing_rule_id == second.id
    still = await store.get_rule(first.id)
    assert still is not None and still.status == "deleted"


async def test_list_rules_newest_first_with_paging_and_total(store: Store) -> None:
    """list_rules pages newest first (created_at, then id) with the total."""
    created = [await _create(store, _rule(f"d{i}.example")) for i in range(7)]
    newest_first = [r.id for r in reversed(created)]
    seen: list[int] = []
    for offset in (0, 3, 6):
        page, total = await store.list_rules(RuleFilter(), limit=3, offset=offset)
        assert total == 7
        seen.extend(r.id for r in page)
    assert seen == newest_first


async def test_list_rules_hides_deleted_unless_asked(store: Store) -> None:
    """Deleted rules are listed only when status "deleted" is asked for."""
    kept = await _create(store, _rule("a.example"))
    paused = await _create(store, _rule("b.example", status="paused"))
    gone = await _create(store, _rule("c.example"))
    await store.delete_rule(gone.id)
    page, total = await store.list_rules(RuleFilter(), limit=10, offset=0)
    assert ({r.id for r in page}, total) == ({kept.id, paused.id}, 2)
    page, total = await store.list_rules(RuleFilter(status="deleted"), limit=10, offset=0)
    assert ([r.id for r in page], total) == ([gone.id], 1)


_FILTER_CASES: list[tuple[str, RuleFilter, Callable[[Rule], bool]]] = [
    ("scopes", RuleFilter(scopes=(MAILBOX, ORG_PHONE)), lambda r: r.scope in (MAILBOX, ORG_PHONE)),
    ("no scopes", RuleFilter(scopes=()), lambda r: False),
    ("family mail", RuleFilter(family="mail"), lambda r: r.scope in (MAILBOX, ORG_MAIL)),
    ("family phone", RuleFilter(family="phone"), lambda r: r.scope in (NUMBER, ORG_PHONE)),
    ("action", RuleFilter(action="allow"), lambda r: r.action == "allow"),
    ("match_type", RuleFilter(match_type="domain"), lambda r: r.match_type == "domain"),
    (
        "match_target",
        RuleFilter(match_target="spam.example"),
        lambda r: r.match_target == "spam.example",
    ),
    ("status", RuleFilter(status="paused"), lambda r: r.status == "paused"),
    (
        "combined",
        RuleFilter(scopes=(ORG_MAIL,), action="block", match_type="domain"),
        lambda r: (r.scope, r.action, r.match_type) == (ORG_MAIL, "block", "domain"),
    ),
]


@pytest.mark.parametrize(
    ("flt", "wanted"), [case[1:] for case in _FILTER_CASES], ids=[c[0] for c in _FILTER_CASES]
)
async def test_list_rules_filters(
    store: Store, flt: RuleFilter, wanted: Callable[[Rule], bool]
) -> None:
    """Each RuleFilter field narrows the listing and its total to matching rules."""
    rules = [
        await _create(store, _rule("spam.example")),
        await _create(store, _rule("good.example", action="allow")),
        await _create(store, _rule("spam.example", scope=MAILBOX, status="paused")),
        await _create(store, _rule("x@y.example", scope=MAILBOX, match_type="exact_email")),
        await _create(store, _rule("+1900", scope=ORG_PHONE, match_type="number_prefix")),
        await _create(
            store, _rule("anonymous", scope=NUMBER, match_type="anonymous", action="allow")
        ),
    ]
    expected = [r.id for r in reversed(rules) if wanted(r)]
    page, total = await store.list_rules(flt, limit=50, offset=0)
    assert [r.id for r in page] == expected
    assert total == len(expected)


async def test_create_rules_batch_reports_each_item(store: Store) -> None:
    """create_rules creates each new rule and reports duplicates, both against existing
    rules and within the batch itself (the first of the batch wins)."""
    existing = await _create(store, _rule("old.example"))
    results = await store.create_rules(
        [
            _rule("new.example"),
            _rule("old.example", action="allow"),
            _rule("new.example", action="mute"),
            _rule("new.example", scope=MAILBOX),
        ]
    )
    assert len(results) == 4
    first, dup_existing, dup_inside, other_scope = results
    assert isinstance(first, Rule) and first.match_target == "new.example"
    assert isinstance(dup_existing, DuplicateRule)
    assert dup_existing.existing_rule_id == existing.id
    assert isinstance(dup_inside, DuplicateRule)
    assert dup_inside.existing_rule_id == first.id
    assert isinstance(other_scope, Rule) and other_scope.scope == MAILBOX
    assert await store.get_rule(first.id) == first
    _, total = await store.list_rules(RuleFilter(), limit=10, offset=0)
    assert total == 3
    assert await store.create_rules([]) == []


async def test_version_grows_on_every_target_and_rule_write(store: Store) -> None:
    """Each target or rule write makes version() larger."""
    seen = [await store.version()]

    async def grew() -> bool:
        seen.append(await store.version())
        return seen[-1] > seen[-2]

    await store.create_target(_target())
    assert await grew()
    await store.update_target("mailbox", MAILBOX, {"enforce": False})
    assert await grew()
    rule = await _create(store, _rule("spam.example", scope=MAILBOX))
    assert await grew()
    await store.update_rule(rule.id, {"note": "n"})
    assert await grew()
    await store.create_rules([_rule("a.example"), _rule("b.example")])
    assert await grew()
    await store.delete_rule(rule.id)
    assert await grew()
    await _create(store, _rule("c.example", scope=MAILBOX))
    assert await grew()
    await store.delete_target("mailbox", MAILBOX)
    assert await grew()


async def test_version_ignores_hits_events_and_reads(store: Store) -> None:
    """Rule hits, events, failed writes and reads leave version() alone."""
    rule = await _create(store, _rule("spam.example"))
    before = await store.version()
    await store.add_rule_hits({rule.id: (3, T0)})
    await store.put_events([_event("e1")])
    await store.purge_events(T0 + timedelta(days=1))
    await store.list_rules(RuleFilter(), limit=10, offset=0)
    await store.snapshot_rules()
    with pytest.raises(DuplicateRule):
        await store.create_rule(_rule("spam.example"))
    assert await store.version() == before


async def test_snapshot_rules_has_version_targets_and_active_rules(store: Store) -> None:
    """snapshot_rules returns the current version, every target, and only active rules
    as compact rows with expiry as epoch seconds."""
    await store.create_target(_target())
    expires = T0 + timedelta(days=1, microseconds=250)
    active = await _create(
        store, _rule("spam.example", scope=MAILBOX, include_subdomains=False, expires_at=expires)
    )
    prefix = await _create(store, _rule("+1900", scope=ORG_PHONE, match_type="number_prefix"))
    await _create(store, _rule("paused.example", status="paused"))
    gone = await _create(store, _rule("gone.example"))
    await store.delete_rule(gone.id)
    version, targets, rows = await store.snapshot_rules()
    assert version == await store.version()
    assert [t.id for t in targets] == [MAILBOX]
    assert sorted(rows) == sorted(
        [
            (active.id, MAILBOX, "block", "domain", "spam.example", False, expires.timestamp()),
            (prefix.id, ORG_PHONE, "block", "number_prefix", "+1900", True, None),
        ]
    )


async def test_scope_rules_reads_only_the_scopes_asked_for(store: Store) -> None:
    """scope_rules answers the version, the targets among the scopes and each scope's
    active rules (the same rows as snapshot_rules), with an empty list for a scope that
    has none; a scope asked for twice is answered once."""
    other = "other@acme.example"
    await store.create_target(_target())
    await store.create_target(_target(other))
    await store.create_target(_target(NUMBER, kind="number"))
    expires = T0 + timedelta(days=1)
    mine = await _create(store, _rule("spam.example", scope=MAILBOX, expires_at=expires))
    await _create(store, _rule("x@y.example", scope=MAILBOX, match_type="exact_email"))
    await _create(store, _rule("paused.example", scope=MAILBOX, status="paused"))
    gone = await _create(store, _rule("gone.example", scope=MAILBOX))
    await store.delete_rule(gone.id)
    await _create(store, _rule("theirs.example", scope=other))
    await _create(store, _rule("+1900", scope=ORG_PHONE, match_type="number_prefix"))
    await _create(store, _rule("org.example"))
    _, _, all_rows = await store.snapshot_rules()

    asked = [MAILBOX, ORG_PHONE, "nobody@acme.example", MAILBOX]
    version, targets, rows = await store.scope_rules(asked)
    assert version == await store.version()
    assert [(t.kind, t.id) for t in targets] == [("mailbox", MAILBOX)]
    assert targets[0] == await store.get_target("mailbox", MAILBOX)
    assert set(rows) == {MAILBOX, ORG_PHONE, "nobody@acme.example"}
    for scope, scope_rows in rows.items():
        assert sorted(scope_rows) == sorted(r for r in all_rows if r[1] == scope)
    assert len(rows[MAILBOX]) == 2 and rows["nobody@acme.example"] == []
    assert (mine.id, MAILBOX, "block", "domain", "spam.example", True, expires.timestamp()) in (
        rows[MAILBOX]
    )

    version, targets, rows = await store.scope_rules([])
    assert (version, targets, rows) == (await store.version(), [], {})


async def test_scope_rules_of_a_deleted_target_is_empty(store: Store) -> None:
    """After delete_target, its scope has no target and no active rule."""
    await store.create_target(_target(NUMBER, kind="number"))
    await _create(store, _rule("+1415", scope=NUMBER, match_type="number_prefix"))
    _, targets, rows = await store.scope_rules([NUMBER])
    assert [t.id for t in targets] == [NUMBER] and len(rows[NUMBER]) == 1
    await store.delete_target("number", NUMBER)
    assert await store.scope_rules([NUMBER]) == (await store.version(), [], {NUMBER: []})


async def test_changed_scopes_lists_what_each_write_changed(store: Store) -> None:
    """changed_scopes(v) says, for each version after v, what that write changed: a target
    write its target's whole scope (None), a rule write each scope with the ids of the
    rules changed there."""
    start = await store.version()
    assert await store.changed_scopes(start) == (start, {})
    await store.create_target(_target())
    rule = await _create(store, _rule("spam.example", scope=MAILBOX))
    a, b = await store.create_rules(
        [_rule("a.example"), _rule("+1900", ORG_PHONE, "number_prefix")]
    )
    assert isinstance(a, Rule) and isinstance(b, Rule)
    await store.update_rule(rule.id, {"action": "allow"})
    with pytest.raises(DuplicateRule):  # no change, no version
        await store.create_rule(_rule("a.example"))
    await store.update_target("mailbox", MAILBOX, {"filter_mode": "whitelist"})
    await store.delete_rule(rule.id)
    await store.delete_rule(rule.id)  # already deleted: no change
    await store.delete_target("mailbox", MAILBOX)
    answer = await store.changed_scopes(start)
    assert answer is not None
    version, changes = answer
    assert version == await store.version() == start + 7
    assert changes == {
        start + 1: {MAILBOX: None},
        start + 2: {MAILBOX: (rule.id,)},
        start + 3: {ORG_MAIL: (a.id,), ORG_PHONE: (b.id,)},
        start + 4: {MAILBOX: (rule.id,)},
        start + 5: {MAILBOX: None},
        start + 6: {MAILBOX: (rule.id,)},
        start + 7: {MAILBOX: None},
    }
    assert list(changes) == sorted(changes)
    later = await store.changed_scopes(start + 5)
    assert later == (start + 7, {start + 6: {MAILBOX: (rule.id,)}, start + 7: {MAILBOX: None}})


async def test_changed_scopes_says_none_when_it_cannot_list_every_version(
    store: Store,
) -> None:
    """None for versions the log does not hold (version 0 is no write) and for a version
    ahead of the store. A write of very many scopes is listed as None, one of very many
    rules in a scope as that whole scope."""
    await _create(store, _rule("a.example"))
    version = await store.version()
    assert await store.changed_scopes(-1) is None
    assert await store.changed_scopes(version + 1) is None
    await store.create_rules([_rule("a.example", scope=f"m{i}@acme.example") for i in range(300)])
    await store.create_rules([_rule(f"d{i}.example", scope=ORG_PHONE) for i in range(200)])
    assert await store.changed_scopes(version) == (
        version + 2,
        {version + 1: None, version + 2: {ORG_PHONE: None}},
    )


async def test_rule_states_reads_rules_by_id(store: Store) -> None:
    """rule_states answers the version and, for each rule asked for that exists, its
    scope, match_type, match_target and active row (None when paused or deleted)."""
    expires = T0 + timedelta(days=1)
    active = await _create(store, _rule("spam.example", expires_at=expires))
    paused = await _create(store, _rule("+1900", ORG_PHONE, "number_prefix", status="paused"))
    gone = await _create(store, _rule("gone.example"))
    await store.delete_rule(gone.id)
    version, states = await store.rule_states([gone.id, active.id, 999_999, paused.id, active.id])
    assert version == await store.version()
    assert sorted(states) == [
        (
            active.id,
            ORG_MAIL,
            "domain",
            "spam.example",
            (active.id, ORG_MAIL, "block", "domain", "spam.example", True, expires.timestamp()),
        ),
        (paused.id, ORG_PHONE, "number_prefix", "+1900", None),
        (gone.id, ORG_MAIL, "domain", "gone.example", None),
    ]
    assert await store.rule_states([]) == (version, [])


async def test_add_rule_hits_adds_counts_and_keeps_the_latest_match(store: Store) -> None:
    """add_rule_hits adds to hits and sets last_matched_at, never moving it back; unknown
    rule ids are ignored."""
    rule = await _create(store, _rule("spam.example"))
    other = await _create(store, _rule("other.example"))
    later = T0 + timedelta(minutes=5)
    await store.add_rule_hits({rule.id: (3, T0), other.id: (1, T0), 424242: (9, T0)})
    await store.add_rule_hits({rule.id: (2, later)})
    await store.add_rule_hits({rule.id: (1, T0)})
    counted = await store.get_rule(rule.id)
    assert counted is not None
    assert (counted.hits, counted.last_matched_at) == (6, later)
    assert counted.updated_at == rule.updated_at
    assert (await store.get_rule(other.id)) == dataclasses.replace(
        other, hits=1, last_matched_at=T0
    )


# --- events --------------------------------------------------------------------------------


async def test_event_round_trips_every_field(store: Store) -> None:
    """put_events then get_event returns the same record, bytes, headers and extra intact."""
    full = _event(
        "evt-full",
        channel="email",
        provider="mailgun",
        provider_event_id=None,
        sender="alice@spam.example",
        envelope_sender="bounce@spam.example",
        recipient=MAILBOX,
        verdict="drop",
        rule=17,
        reason="rule",
        mode="whitelist",
        would_drop=True,
        unauthenticated_allow=True,
        outcome="quarantined",
        query="a=1&b=2",
        headers=(("x-dup", "1"), ("X-Dup", "2"), ("content-type", "multipart/form-data")),
        body=bytes(range(256)),
        forward_url="https://app.example/mail",
        forward_status=200,
        response_status=406,
        response_content_type="text/plain",
        response_body=b"\x00rejected\xff",
        extra={"spf": "pass", "scores": [1, 2.5], "nested": {"dkim": None}},
    )
    await store.put_events([full, _event("evt-min")])
    assert await store.get_event("evt-full") == full
    assert await store.get_event("evt-min") == _event("evt-min")


async def test_get_event_unknown_is_none(store: Store) -> None:
    """An unknown event id is None."""
    assert await store.get_event("nope") is None


async def test_put_events_replaces_by_id(store: Store) -> None:
    """Putting an event with a known id replaces the record, not adds one."""
    await store.put_events([_event("e1", outcome="quarantined")])
    await store.put_events([_event("e1", outcome="released")])
    found = await store.get_event("e1")
    assert found is not None and found.outcome == "released"
    page, _ = await store.list_events(EventFilter(), cursor=None, limit=10)
    assert [e.id for e in page] == ["e1"]


_EVENTS = [
    _event("a", T0, verdict="drop", outcome="quarantined"),
    _event("b", T0 + timedelta(seconds=1), recipient="+14155550999", sender="+1800"),
    _event("c", T0 + timedelta(seconds=2), verdict="mute", sender="+1800"),
    _event("d", T0 + timedelta(seconds=3), recipient="+14155550999", verdict="drop"),
    _event("e", T0 + timedelta(seconds=4), outcome="forward_failed"),
]

_EVENT_FILTERS: list[tuple[str, EventFilter, list[str]]] = [
    ("none", EventFilter(), ["e", "d", "c", "b", "a"]),
    ("verdict", EventFilter(verdict="drop"), ["d", "a"]),
    ("target", EventFilter(target="+14155550999"), ["d", "b"]),
    ("targets", EventFilter(targets=("+14155550999", "+1")), ["d", "b"]),
    ("no targets", EventFilter(targets=()), []),
    ("sender", EventFilter(sender="+1800"), ["c", "b"]),
    ("outcome", EventFilter(outcome="quarantined"), ["a"]),
    ("since", EventFilter(since=T0 + timedelta(seconds=2)), ["e", "d", "c"]),
    ("combined", EventFilter(verdict="drop", targets=(NUMBER,)), ["a"]),
]


@pytest.mark.parametrize(
    ("flt", "expected"), [c[1:] for c in _EVENT_FILTERS], ids=[c[0] for c in _EVENT_FILTERS]
)
async def test_list_events_filters(store: Store, flt: EventFilter, expected: list[str]) -> None:
    """Each EventFilter field narrows the listing, newest first."""
    await store.put_events(_EVENTS)
    page, next_cursor = await store.list_events(flt, cursor=None, limit=50)
    assert [e.id for e in page] == expected
    assert next_cursor is None


@pytest.mark.parametrize("limit", [1, 4, 7, 30])
async def test_list_events_cursor_visits_each_event_once(store: Store, limit: int) -> None:
    """Following next_cursor walks every event exactly once, newest first, even when
    several share a received_at; the last page has no cursor."""
    events = [_event(f"e{i:02d}", T0 + timedelta(seconds=i // 3)) for i in range(30)]
    await store.put_events(events)
    seen: list[EventRecord] = []
    cursor: str | None = None
    for _ in range(40):
        page, cursor = await store.list_events(EventFilter(), cursor=cursor, limit=limit)
        assert len(page) <= limit
        seen.extend(page)
        if cursor is None:
            break
    assert cursor is None
    assert sorted(e.id for e in seen) == sorted(e.id for e in events)
    assert len(seen) == len(events)
    times = [e.received_at for e in seen]
    assert times == sorted(times, reverse=True)


async def test_list_events_cursor_keeps_the_filter(store: Store) -> None:
    """Paging with a filter returns only matching events, each once."""
    events = [
        _event(f"e{i:02d}", T0 + timedelta(seconds=i), verdict="drop" if i % 2 else "deliver")
        for i in range(11)
    ]
    await store.put_events(events)
    flt = EventFilter(verdict="drop")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = await store.list_events(flt, cursor=cursor, limit=2)
        seen.extend(e.id for e in page)
        if cursor is None:
            break
    assert seen == [f"e{i:02d}" for i in (9, 7, 5, 3, 1)]


async def test_list_events_rejects_a_bad_cursor(store: Store) -> None:
    """A cursor the store did not make is a BadRequest, not a crash."""
    with pytest.raises(BadRequest):
        await store.list_events(EventFilter(), cursor="not a cursor!", limit=10)


async def test_purge_events_deletes_before_the_cutoff(store: Store) -> None:
    """purge_events deletes events received strictly before the cutoff and counts them."""
    await store.put_events([_event(f"e{i}", T0 + timedelta(days=i)) for i in range(5)])
    assert await store.purge_events(T0 + timedelta(days=2)) == 2
    page, _ = await store.list_events(EventFilter(), cursor=None, limit=10)
    assert [e.id for e in page] == ["e4", "e3", "e2"]
    assert await store.purge_events(T0) == 0


async def test_delivered_answers_reads_only_delivered_events_in_one_call(store: Store) -> None:
    """What a provider's retry is answered from: forwarded and released events with an
    answer; not quarantined, failed or unknown ones; bodies byte for byte."""
    answer = b'<?xml version="1.0"?><Response><Say>hi \xc3\xa9</Say></Response>\x00'
    await store.put_events(
        [
            _event(
                "fw", response_status=200, response_content_type="text/xml", response_body=answer
            ),
            _event("rel", outcome="released", response_status=204, response_body=None),
            _event("q", outcome="quarantined", verdict="drop"),
            _event("fail", outcome="forward_failed", forward_status=500),
            _event("fw-no-answer"),  # forwarded by an older version without its answer
        ]
    )
    ids = ["fw", "rel", "q", "fail", "fw-no-answer", "unknown", "fw"]
    found = await store.delivered_answers(ids)
    assert found == {
        "fw": StoredAnswer(200, "text/xml", answer),
        "rel": StoredAnswer(204, None, b""),
    }
    assert await store.delivered_answers([]) == {}
    now = store.delivered_answers_nowait(ids)
    assert now is None or now == found  # a store that can read on the spot reads the same
    many = [f"e{i}" for i in range(1200)]  # beyond one IN (...) list
    await store.put_events([_event(i, response_status=200, response_body=b"ok") for i in many])
    assert len(await store.delivered_answers(many)) == 1200


async def test_a_delivered_record_is_not_replaced_by_an_undelivered_one(store: Store) -> None:
    """Two replicas may both handle retries of one event and write its record in either
    order: the delivered record (and its answer) wins; an undelivered one may be replaced
    (quarantined → released, forward_failed → forwarded)."""
    ok = _event("e1", response_status=200, response_body=b"<Response/>")
    await store.put_events([ok])
    await store.put_events([_event("e1", outcome="forward_failed", forward_status=503)])
    await store.put_events([_event("e1", outcome="quarantined", verdict="drop")])
    kept = await store.get_event("e1")
    assert kept is not None and (kept.outcome, kept.response_body) == ("forwarded", b"<Response/>")
    assert await store.count_events("forward_failed") == 0
    page, _ = await store.list_events(EventFilter(verdict="drop"), cursor=None, limit=10)
    assert page == []  # the refused write left no index entry behind

    await store.put_events([_event("e2", outcome="forward_failed", forward_status=503)])
    await store.put_events([_event("e2", response_status=200, response_body=b"later")])
    assert (await store.delivered_answers(["e2"]))["e2"].body == b"later"
    await store.put_events([_event("e3", outcome="quarantined", verdict="drop")])
    await store.put_events([_event("e3", outcome="released", response_status=200)])
    again = await store.get_event("e3")
    assert again is not None and again.outcome == "released"
    await store.put_events([_event("e3", outcome="forwarded", response_status=201)])
    latest = await store.get_event("e3")
    assert latest is not None and latest.response_status == 201  # delivered over delivered


async def test_count_events_counts_one_outcome_through_release_and_purge(
    store: Store,
) -> None:
    """count_events counts the stored events of one outcome: an event released (put
    again with outcome released) leaves the quarantined count, a purged one leaves every
    count, and an outcome nobody has is 0."""
    assert await store.count_events("quarantined") == 0
    await store.put_events(
        [
            _event("q1", T0, verdict="drop", outcome="quarantined"),
            _event("q2", T0 + timedelta(days=1), verdict="drop", outcome="quarantined"),
            _event("q3", T0 + timedelta(days=3), verdict="drop", outcome="quarantined"),
            _event("f1", T0, outcome="forwarded"),
            _event("f2", T0 + timedelta(days=3), outcome="forwarded"),
            _event("x1", T0 + timedelta(days=3), outcome="forward_failed"),
        ]
    )
    assert await store.count_events("quarantined") == 3
    assert await store.count_events("forwarded") == 2
    assert await store.count_events("forward_failed") == 1
    assert await store.count_events("released") == 0

    q2 = await store.get_event("q2")
    assert q2 is not None
    await store.put_events([dataclasses.replace(q2, outcome="released")])
    assert await store.count_events("quarantined") == 2
    assert await store.count_events("released") == 1

    assert await store.purge_events(T0 + timedelta(days=2)) == 3  # q1, f1, the released q2
    assert await store.count_events("quarantined") == 1
    assert await store.count_events("forwarded") == 1
    assert await store.count_events("released") == 0
    assert await store.count_events("no such outcome") == 0


async def test_datetimes_round_trip_as_aware_utc(store: Store) -> None:
    """Times written in any offset come back as the same instant in UTC, to the
    microsecond."""
    plus5 = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2025, 6, 1, 12, 0, 0, 999999, tzinfo=plus5)
    target = await store.create_target(_target(created_at=local))
    assert target.created_at == local and _is_aware_utc(target.created_at)
    rule = await store.create_rule(_rule("spam.example", expires_at=local))
    assert rule.expires_at == local and _is_aware_utc(rule.expires_at)
    fetched = await store.get_rule(rule.id)
    assert fetched is not None and fetched.expires_at is not None
    assert fetched.expires_at == local and _is_aware_utc(fetched.expires_at)
    assert _is_aware_utc(fetched.created_at)
    await store.put_events([_event("tz", local)])
    event = await store.get_event("tz")
    assert event is not None and event.received_at == local
    assert _is_aware_utc(event.received_at)
    assert event.received_at.microsecond == local.microsecond


# --- contacts ------------------------------------------------------------------------------


def _delta(
    sender: str,
    scope: str = MAILBOX,
    *,
    family: Family | None = None,
    at: datetime = T0,
    delivered: int = 1,
    muted: int = 0,
    dropped: int = 0,
    last: datetime | None = None,
    number_type: str | None = None,
    region: str | None = None,
) -> ContactDelta:
    return ContactDelta(
        scope=scope,
        sender=sender,
        family=family or ("mail" if "@" in scope or scope == ORG_MAIL else "phone"),
        count=delivered + muted + dropped,
        delivered=delivered,
        muted=muted,
        dropped=dropped,
        first_seen=at,
        last_seen=last or at,
        number_type=number_type,
        region=region,
    )


async def _contact(store: Store, scope: str, sender: str) -> Contact:
    found = await store.get_contact(scope, sender)
    assert found is not None, (scope, sender)
    return found


async def test_add_contacts_creates_a_contact_with_every_field(store: Store) -> None:
    """A first delta creates the contact as given: counts, times, phone details, no
    category, state unset and no rule."""
    later = T0 + timedelta(hours=2)
    await store.add_contacts(
        [
            _delta("bob@spam.example", delivered=2, muted=1, dropped=3, last=later),
            _delta("+14155550123", NUMBER, number_type="mobile", region="US"),
        ]
    )
    assert await _contact(store, MAILBOX, "bob@spam.example") == Contact(
        scope=MAILBOX,
        sender="bob@spam.example",
        family="mail",
        state="unset",
        rule_id=None,
        count=6,
        delivered=2,
        muted=1,
        dropped=3,
        first_seen=T0,
        last_seen=later,
    )
    phone = await _contact(store, NUMBER, "+14155550123")
    assert (phone.family, phone.number_type, phone.region) == ("phone", "mobile", "US")
    assert _is_aware_utc(phone.first_seen) and _is_aware_utc(phone.last_seen)


async def test_add_contacts_adds_counts_and_widens_the_seen_window(store: Store) -> None:
    """Later deltas add their counts, keep the earliest first_seen and the latest
    last_seen whatever order they arrive in, and leave the category alone."""
    early, late = T0 - timedelta(days=3), T0 + timedelta(days=3)
    await store.add_contacts([_delta("bob@spam.example", delivered=1)])
    await store.set_contact_category(MAILBOX, "bob@spam.example", "vendor")
    await store.add_contacts([_delta("bob@spam.example", at=late, delivered=0, dropped=2)])
    await store.add_contacts([_delta("bob@spam.example", at=early, delivered=0, muted=4)])
    c = await _contact(store, MAILBOX, "bob@spam.example")
    assert (c.count, c.delivered, c.muted, c.dropped) == (7, 1, 4, 2)
    assert (c.first_seen, c.last_seen) == (early, late)
    assert c.category == "vendor"


async def test_add_contacts_sets_phone_details_only_when_given(store: Store) -> None:
    """number_type and region are replaced when a delta gives a number_type (a
    non-geographic number has no region), and kept when it gives none."""
    await store.add_contacts([_delta("+14155550123", NUMBER, number_type="mobile", region="US")])
    await store.add_contacts([_delta("+14155550123", NUMBER)])
    c = await _contact(store, NUMBER, "+14155550123")
    assert (c.number_type, c.region) == ("mobile", "US")
    await store.add_contacts([_delta("+14155550123", NUMBER, number_type="voip")])
    c = await _contact(store, NUMBER, "+14155550123")
    assert (c.number_type, c.region) == ("voip", None)


async def test_add_contacts_batches_several_scopes_and_senders(store: Store) -> None:
    """One batch may hold many contacts; the same sender in two scopes is two contacts."""
    await store.add_contacts(
        [_delta(f"u{i}@spam.example") for i in range(30)]
        + [_delta("u0@spam.example", ORG_MAIL, dropped=1, delivered=0)]
    )
    _, total = await store.list_contacts(ContactFilter(), limit=1, offset=0)
    assert total == 31
    org = await _contact(store, ORG_MAIL, "u0@spam.example")
    assert (org.count, org.dropped) == (1, 1)
    await store.add_contacts([])


async def test_get_contact_unknown_is_none(store: Store) -> None:
    """A sender never counted in a scope is None there, even if it was counted elsewhere."""
    await store.add_contacts([_delta("bob@spam.example")])
    assert await store.get_contact(MAILBOX, "alice@spam.example") is None
    assert await store.get_contact(ORG_MAIL, "bob@spam.example") is None


async def test_set_contact_category_sets_and_clears(store: Store) -> None:
    """set_contact_category sets a label, None clears it, and an unknown contact is None."""
    await store.add_contacts([_delta("bob@spam.example")])
    tagged = await store.set_contact_category(MAILBOX, "bob@spam.example", "newsletter")
    assert tagged is not None and tagged.category == "newsletter"
    assert (await _contact(store, MAILBOX, "bob@spam.example")).category == "newsletter"
    cleared = await store.set_contact_category(MAILBOX, "bob@spam.example", None)
    assert cleared is not None and cleared.category is None
    assert await store.set_contact_category(MAILBOX, "nobody@spam.example", "x") is None


@pytest.mark.parametrize(
    ("sender", "scope", "match_type", "match_target"),
    [
        ("bob@spam.example", MAILBOX, "exact_email", "bob@spam.example"),
        ("invalid", MAILBOX, "invalid", "invalid"),
        ("+14155550123", NUMBER, "exact_number", "+14155550123"),
        ("client:alice", NUMBER, "exact_number", "client:alice"),
        ("anonymous", ORG_PHONE, "anonymous", "anonymous"),
    ],
    ids=["email", "invalid", "number", "token", "anonymous"],
)
async def test_contact_state_is_its_exact_rule(
    store: Store, sender: str, scope: str, match_type: MatchType, match_target: str
) -> None:
    """A contact's state and rule_id come from the active exact rule for that sender in
    that scope: block → blocked, allow → whitelisted, mute → muted."""
    await store.add_contacts([_delta(sender, scope)])
    rule = await store.create_rule(
        _rule(match_target, scope=scope, match_type=match_type, action="allow")
    )
    c = await _contact(store, scope, sender)
    assert (c.state, c.rule_id) == ("whitelisted", rule.id)
    await store.update_rule(rule.id, {"action": "block"})
    assert (await _contact(store, scope, sender)).state == "blocked"
    await store.update_rule(rule.id, {"action": "mute"})
    assert (await _contact(store, scope, sender)).state == "muted"


async def test_contact_state_ignores_other_rules(store: Store) -> None:
    """Only the exact rule in the contact's own scope counts: a domain rule, an exact rule
    in another scope, or an exact rule for another sender leaves the contact unset."""
    await store.add_contacts([_delta("bob@spam.example")])
    await store.create_rule(_rule("spam.example", scope=MAILBOX))
    await store.create_rule(_rule("bob@spam.example", match_type="exact_email"))
    await store.create_rule(_rule("alice@spam.example", scope=MAILBOX, match_type="exact_email"))
    c = await _contact(store, MAILBOX, "bob@spam.example")
    assert (c.state, c.rule_id) == ("unset", None)


async def test_contact_state_of_a_rule_not_in_force(store: Store) -> None:
    """A paused or expired exact rule still holds the slot (rule_id) but the contact's
    state is unset; a deleted rule is no rule at all."""
    await store.add_contacts([_delta("bob@spam.example")])
    rule = await store.create_rule(
        _rule("bob@spam.example", scope=MAILBOX, match_type="exact_email", status="paused")
    )
    c = await _contact(store, MAILBOX, "bob@spam.example")
    assert (c.state, c.rule_id) == ("unset", rule.id)
    past = datetime(2020, 1, 1, tzinfo=UTC)
    await store.update_rule(rule.id, {"status": "active", "expires_at": past})
    c = await _contact(store, MAILBOX, "bob@spam.example")
    assert (c.state, c.rule_id) == ("unset", rule.id)
    future = datetime.now(UTC) + timedelta(days=1)
    await store.update_rule(rule.id, {"expires_at": future})
    assert (await _contact(store, MAILBOX, "bob@spam.example")).state == "blocked"
    await store.delete_rule(rule.id)
    c = await _contact(store, MAILBOX, "bob@spam.example")
    assert (c.state, c.rule_id) == ("unset", None)


async def _seed_contacts(store: Store) -> None:
    await store.add_contacts(
        [
            _delta("a@x.example", at=T0 + timedelta(days=1), delivered=5),
            _delta("b@x.example", at=T0 + timedelta(days=3), delivered=1),
            _delta("c@x.example", at=T0 + timedelta(days=2), delivered=9),
            _delta("d@x.example", ORG_MAIL, at=T0, delivered=3),
            _delta("+14155550123", NUMBER, at=T0 + timedelta(days=4), delivered=7),
        ]
    )
    await store.create_rule(_rule("a@x.example", scope=MAILBOX, match_type="exact_email"))
    await store.create_rule(
        _rule("+14155550123", scope=NUMBER, match_type="exact_number", action="allow")
    )


_CONTACT_SORTS: list[tuple[str, ContactSort, bool, list[str]]] = [
    ("count-desc", "count", True, ["c", "+1", "a", "d", "b"]),
    ("count-asc", "count", False, ["b", "d", "a", "+1", "c"]),
    ("last-desc", "last_seen", True, ["+1", "b", "c", "a", "d"]),
    ("first-asc", "first_seen", False, ["d", "a", "c", "b", "+1"]),
]


@pytest.mark.parametrize(
    ("sort", "descending", "expected"),
    [c[1:] for c in _CONTACT_SORTS],
    ids=[c[0] for c in _CONTACT_SORTS],
)
async def test_list_contacts_sorts(
    store: Store, sort: ContactSort, descending: bool, expected: list[str]
) -> None:
    """list_contacts sorts by count, last_seen or first_seen, either way, with the total."""
    await _seed_contacts(store)
    page, total = await store.list_contacts(
        ContactFilter(), sort=sort, descending=descending, limit=50, offset=0
    )
    assert [c.sender[:2] if c.sender.startswith("+") else c.sender[0] for c in page] == expected
    assert total == 5


_CONTACT_FILTERS: list[tuple[str, ContactFilter, list[str]]] = [
    ("scope", ContactFilter(scopes=(MAILBOX,)), ["a@x.example", "b@x.example", "c@x.example"]),
    ("scopes", ContactFilter(scopes=(ORG_MAIL, NUMBER)), ["+14155550123", "d@x.example"]),
    ("no-scopes", ContactFilter(scopes=()), []),
    ("family", ContactFilter(family="phone"), ["+14155550123"]),
    ("blocked", ContactFilter(state="blocked"), ["a@x.example"]),
    ("whitelisted", ContactFilter(state="whitelisted"), ["+14155550123"]),
    ("muted", ContactFilter(state="muted"), []),
    (
        "unset-in-scope",
        ContactFilter(scopes=(MAILBOX,), state="unset"),
        ["b@x.example", "c@x.example"],
    ),
]


@pytest.mark.parametrize(
    ("flt", "expected"), [c[1:] for c in _CONTACT_FILTERS], ids=[c[0] for c in _CONTACT_FILTERS]
)
async def test_list_contacts_filters(store: Store, flt: ContactFilter, expected: list[str]) -> None:
    """Each ContactFilter field narrows the listing and its total."""
    await _seed_contacts(store)
    page, total = await store.list_contacts(flt, limit=50, offset=0)
    assert sorted(c.sender for c in page) == expected
    assert total == len(expected)


async def test_list_contacts_pages_ties_once_each(store: Store) -> None:
    """Contacts with equal sort keys still page each exactly once (ties by scope, sender),
    and a page past the end is empty with the total."""
    senders = [f"u{i:02d}@x.example" for i in range(11)]
    await store.add_contacts([_delta(s) for s in senders])
    for descending in (True, False):
        seen: list[str] = []
        for offset in range(0, 12, 4):
            page, total = await store.list_contacts(
                ContactFilter(), sort="count", descending=descending, limit=4, offset=offset
            )
            assert total == 11
            seen.extend(c.sender for c in page)
        assert seen == senders
    assert await store.list_contacts(ContactFilter(), limit=4, offset=20) == ([], 11)


async def test_contacts_and_audit_leave_version_alone(store: Store) -> None:
    """Contact counts, categories and audit entries do not move version()."""
    before = await store.version()
    await store.add_contacts([_delta("bob@spam.example")])
    await store.set_contact_category(MAILBOX, "bob@spam.example", "x")
    await store.add_audit([NewAudit(at=T0, actor="ops", action="rule.create")])
    assert await store.version() == before


# --- audit ---------------------------------------------------------------------------------


async def test_audit_round_trips_every_field(store: Store) -> None:
    """add_audit then list_audit returns each field, with a new id per entry and before /
    after as JSON objects (None when absent)."""
    before = {"id": 7, "action": "allow", "note": None, "nested": {"a": [1, 2.5, "ü"]}}
    after = {**before, "action": "block"}
    await store.add_audit(
        [
            NewAudit(
                at=T0,
                actor="ops",
                action="rule.update",
                scope=MAILBOX,
                rule_id=7,
                before=before,
                after=after,
            ),
            NewAudit(at=T0 + timedelta(seconds=1), actor="config", action="target.create"),
        ]
    )
    page, total = await store.list_audit(limit=10, offset=0)
    assert total == 2
    newest, oldest = page
    assert (newest.actor, newest.action, newest.scope, newest.rule_id) == (
        "config",
        "target.create",
        None,
        None,
    )
    assert (newest.before, newest.after) == (None, None)
    assert (oldest.at, oldest.actor, oldest.action, oldest.scope, oldest.rule_id) == (
        T0,
        "ops",
        "rule.update",
        MAILBOX,
        7,
    )
    assert (oldest.before, oldest.after) == (before, after)
    assert _is_aware_utc(oldest.at)
    assert newest.id != oldest.id
    await store.add_audit([])


async def test_list_audit_newest_first_with_filters_and_paging(store: Store) -> None:
    """list_audit pages newest first (entries at the same instant newest-added first) and
    filters by scope and actor."""
    entries = [
        NewAudit(
            at=T0 + timedelta(seconds=i // 2),
            actor="ops" if i % 3 else "review:junk",
            action="rule.create",
            scope=MAILBOX if i % 2 else ORG_MAIL,
            rule_id=i,
        )
        for i in range(10)
    ]
    for entry in entries:
        await store.add_audit([entry])
    seen: list[int | None] = []
    for offset in (0, 4, 8):
        page, total = await store.list_audit(limit=4, offset=offset)
        assert total == 10
        seen.extend(e.rule_id for e in page)
    assert seen == list(range(9, -1, -1))
    page, total = await store.list_audit(scope=MAILBOX, limit=50, offset=0)
    assert [e.rule_id for e in page] == [9, 7, 5, 3, 1] and total == 5
    page, total = await store.list_audit(actor="review:junk", limit=50, offset=0)
    assert [e.rule_id for e in page] == [9, 6, 3, 0] and total == 4
    page, total = await store.list_audit(scope=ORG_MAIL, actor="ops", limit=50, offset=0)
    assert [e.rule_id for e in page] == [8, 4, 2] and total == 3
