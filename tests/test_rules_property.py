"""Property test: ``rules.decide`` agrees with a brute-force reading of SPEC §3.

The reference below scans every rule, keeps the candidates, sorts them by the precedence
key and applies the authentication, envelope and shadow rules, all written as plainly
as possible. Domains are drawn from a tiny label alphabet and numbers from a tiny digit
alphabet so that rules overlap often.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.models import (
    ACTIONS,
    MODES,
    ORG_MAIL,
    ORG_PHONE,
    Action,
    Decision,
    Family,
    MatchType,
    Mode,
    Sender,
    Target,
    TargetKind,
)
from gateway.rules import RuleSet, compile_rules, decide, scopes_matching
from gateway.store.base import RuleState, SnapshotRule

NOW = 1000.0
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

MAILBOXES = ("m1@ours.example", "m2@ours.example")
NUMBERS = ("+10001", "+10002")
ORPHAN_MAILBOX = "m3@ours.example"  # has rules but is not a target
ORPHAN_NUMBER = "+10003"
# Repeats weight the draws towards the first target and the org lists, where the
# recipient usually is, so that rules apply more often than not.
MAIL_SCOPES = (*[MAILBOXES[0]] * 3, MAILBOXES[1], ORPHAN_MAILBOX, *[ORG_MAIL] * 3)
PHONE_SCOPES = (*[NUMBERS[0]] * 3, NUMBERS[1], ORPHAN_NUMBER, *[ORG_PHONE] * 3)

LABELS = ("a", "b", "ex")
LOCALS = ("x", "y")
DIGITS = "190"
TOKENS = ("12345", "acmebank", "sip:bob@x.example")
MAIL_RECIPIENTS = (*[MAILBOXES[0]] * 3, MAILBOXES[1], ORPHAN_MAILBOX, "nobody@ours.example")
PHONE_RECIPIENTS = (*[NUMBERS[0]] * 3, NUMBERS[1], ORPHAN_NUMBER, "+19999")

actions: st.SearchStrategy[Action] = st.sampled_from(ACTIONS)
modes: st.SearchStrategy[Mode] = st.sampled_from(MODES)
domains = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(".".join)
emails = st.builds(lambda local, d: f"{local}@{d}", st.sampled_from(LOCALS), domains)
numbers = st.text(DIGITS, min_size=1, max_size=4).map(lambda s: "+" + s)
expiries = st.sampled_from((None, None, None, NOW - 1, NOW, NOW + 1))

mail_specs = st.one_of(
    st.tuples(st.sampled_from(MAIL_SCOPES), st.just("exact_email"), emails),
    st.tuples(st.sampled_from(MAIL_SCOPES), st.just("domain"), domains),
    st.tuples(st.sampled_from(MAIL_SCOPES), st.just("invalid"), st.just("invalid")),
)
phone_specs = st.one_of(
    st.tuples(
        st.sampled_from(PHONE_SCOPES),
        st.just("exact_number"),
        st.one_of(numbers, st.sampled_from(TOKENS)),
    ),
    st.tuples(st.sampled_from(PHONE_SCOPES), st.just("number_prefix"), numbers),
    st.tuples(st.sampled_from(PHONE_SCOPES), st.just("anonymous"), st.just("anonymous")),
)


def email_sender(address: str) -> Sender:
    return Sender("email", address, address, domain=address.rpartition("@")[2])


def number_sender(value: str) -> Sender:
    return Sender("phone" if value.startswith("+") else "token", value, value)


ANONYMOUS = Sender("anonymous", "anonymous", "")
INVALID = Sender("invalid", "invalid", "???")
any_sender = st.one_of(
    emails.map(email_sender),
    numbers.map(number_sender),
    st.sampled_from(TOKENS).map(number_sender),
    st.just(ANONYMOUS),
    st.just(INVALID),
)


@dataclass(frozen=True)
class Scenario:
    targets: list[Target]
    rows: list[SnapshotRule]
    mail_mode: Mode
    phone_mode: Mode
    sender: Sender
    recipient: str
    family: Family
    authenticated: bool
    envelope: Sender | None


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """One event against a small rule set, biased so that rules match it often.

    Mostly rules, recipient and sender of one family, with a few rules, recipients and
    senders of the other family mixed in; senders are often built from the rules' own
    targets (an exact address, a subdomain of a domain rule, a number under a prefix).
    """
    family: Family = draw(st.sampled_from(("mail", "phone")))
    own, other = (mail_specs, phone_specs) if family == "mail" else (phone_specs, mail_specs)
    specs = draw(st.lists(own, min_size=2, max_size=12, unique=True))
    specs += draw(st.lists(other, max_size=2, unique=True))
    specs = list(dict.fromkeys(specs))  # one rule per (scope, match_type, match_target)
    rows: list[SnapshotRule] = [
        (i, scope, draw(actions), cast(MatchType, mt), target, draw(st.booleans()), draw(expiries))
        for i, (scope, mt, target) in enumerate(specs, start=1)
    ]
    targets = [
        Target(
            "mailbox" if "@" in target_id else "number",
            target_id,
            draw(modes),
            draw(st.booleans()),
            EPOCH,
            EPOCH,
        )
        for target_id in (*MAILBOXES, *NUMBERS)
    ]

    near_mail: list[Sender] = []  # senders that some rule matches
    near_phone: list[Sender] = []
    for _id, _scope, _action, mt, target, _sub, _exp in rows:
        if mt == "exact_email":
            near_mail.append(email_sender(target))
        elif mt == "domain":
            near_mail += [email_sender(f"{local}{target}") for local in ("x@", "y@a.", "x@ex.b.")]
        elif mt == "invalid":
            near_mail.append(INVALID)
        elif mt == "exact_number":
            near_phone.append(number_sender(target))
        elif mt == "number_prefix":
            near_phone += [number_sender(target + tail) for tail in ("", "9", "01")]
        else:
            near_phone.append(ANONYMOUS)
    near = near_mail if family == "mail" else near_phone
    sender_from: st.SearchStrategy[Sender] = any_sender
    one_in_five = draw(st.integers(0, 4)) == 0
    if near and not one_in_five:  # four times in five, a sender that some rule matches
        sender_from = st.sampled_from(near)
    sender = draw(sender_from)
    envelope = None
    if draw(st.booleans()):
        envelope_from: st.SearchStrategy[Sender] = st.one_of(
            emails.map(email_sender), st.just(INVALID)
        )
        near_envelope = draw(st.integers(0, 2)) != 0
        if near_mail and near_envelope:  # two times in three, one that some rule matches
            envelope_from = st.sampled_from(near_mail)
        envelope = draw(envelope_from)
    recipients: tuple[str, ...] = MAIL_RECIPIENTS if family == "mail" else PHONE_RECIPIENTS
    if not draw(st.integers(0, 4)):
        recipients = MAIL_RECIPIENTS + PHONE_RECIPIENTS
    return Scenario(
        targets=targets,
        rows=rows,
        mail_mode=draw(modes),
        phone_mode=draw(modes),
        sender=sender,
        recipient=draw(st.sampled_from(recipients)),
        family=family,
        authenticated=draw(st.booleans()),
        envelope=envelope,
    )


# --- the reference -----------------------------------------------------------------------


def matches(rule: SnapshotRule, s: Sender) -> bool:
    """Does the rule match the sender? (SPEC §3 matching, written out plainly.)"""
    _id, _scope, _action, mt, target, sub, _exp = rule
    if mt == "exact_email":
        return s.kind == "email" and s.value == target
    if mt == "domain":
        if s.kind != "email" or s.domain is None:
            return False
        return s.domain == target or (sub and s.domain.endswith("." + target))
    if mt == "exact_number":
        return s.kind in ("phone", "token") and s.value == target
    if mt == "number_prefix":
        return s.kind == "phone" and s.value.startswith(target)
    if mt == "anonymous":
        return s.kind == "anonymous"
    if mt == "invalid":
        return s.kind == "invalid"
    raise AssertionError(mt)


def specificity(rule: SnapshotRule) -> int:
    mt, target = rule[3], rule[4]
    if mt == "domain":
        return len(target.split("."))
    if mt == "number_prefix":
        return len(target)
    return 1000  # exact


RANK = {"allow": 0, "mute": 1, "block": 2}
VERDICT = {"allow": "deliver", "mute": "mute", "block": "drop"}


@dataclass(frozen=True)
class Candidate:
    rule: SnapshotRule
    via_from: bool

    def key(self, target_scope: str | None) -> tuple[int, bool, int, bool]:
        return (
            specificity(self.rule),
            self.rule[1] == target_scope,
            RANK[self.rule[2]],
            self.via_from,  # a full tie goes to the From address's rule
        )


def reference(
    targets: list[Target],
    rows: list[SnapshotRule],
    mail_mode: Mode,
    phone_mode: Mode,
    sender: Sender,
    recipient: str,
    family: Family,
    authenticated: bool,
    envelope: Sender | None,
) -> Decision:
    target = next((t for t in targets if t.id == recipient), None)
    if target is not None and (target.kind == "mailbox") != (family == "mail"):
        target = None
    scopes = [ORG_MAIL if family == "mail" else ORG_PHONE]
    if target is not None:
        scopes.append(target.id)
    if target is not None:
        mode = target.filter_mode
    else:
        mode = mail_mode if family == "mail" else phone_mode
    target_scope = target.id if target is not None else None

    candidates: list[Candidate] = []
    for r in rows:
        if r[1] not in scopes or (r[6] is not None and r[6] <= NOW):
            continue
        if matches(r, sender):
            candidates.append(Candidate(r, True))
        if family == "mail" and envelope is not None and r[2] != "allow" and matches(r, envelope):
            candidates.append(Candidate(r, False))
    candidates.sort(key=lambda c: c.key(target_scope), reverse=True)

    unauth = False
    if family == "mail" and not authenticated and candidates and candidates[0].rule[2] == "allow":
        unauth = True
        candidates = [c for c in candidates if not (c.via_from and c.rule[2] == "allow")]

    enforce = target.enforce if target is not None else True
    if candidates:
        win = candidates[0].rule
        action: Action | None = win[2]
        rule_id: int | None = win[0]
        verdict = VERDICT[win[2]]
        reason = "rule"
    else:
        action, rule_id, reason = None, None, "mode_default"
        verdict = "deliver" if mode == "blacklist" else "drop"
    would_drop = False
    if verdict == "drop" and not enforce:
        verdict, would_drop = "deliver", True
    return Decision(
        verdict,  # type: ignore[arg-type]
        rule_id,
        reason,
        mode,
        sender.value,
        recipient,
        family,
        action,
        would_drop,
        unauth,
    )


@settings(max_examples=500, deadline=None)
@given(sc=scenarios())
def test_decide_matches_brute_force_reference(sc: Scenario) -> None:
    """decide() gives the same decision as scanning every rule by the SPEC §3 precedence."""
    rs = compile_rules(sc.targets, sc.rows, mail_mode=sc.mail_mode, phone_mode=sc.phone_mode)
    got = decide(
        rs,
        sc.sender,
        sc.recipient,
        sc.family,
        now=NOW,
        authenticated=sc.authenticated,
        envelope=sc.envelope,
    )
    want = reference(
        sc.targets,
        sc.rows,
        sc.mail_mode,
        sc.phone_mode,
        sc.sender,
        sc.recipient,
        sc.family,
        sc.authenticated,
        sc.envelope,
    )
    assert got == want


# --- incremental updates ---------------------------------------------------------------------

ALL_SCOPES = (*MAILBOXES, ORPHAN_MAILBOX, ORG_MAIL, *NUMBERS, ORPHAN_NUMBER, ORG_PHONE)
TARGET_IDS = (*MAILBOXES, ORPHAN_MAILBOX, *NUMBERS, ORPHAN_NUMBER)


def _specs_for(scope: str) -> st.SearchStrategy[tuple[str, str, str]]:
    """(scope, match_type, match_target) of rules in this scope (mostly of its family)."""
    own, other = (
        (mail_specs, phone_specs)
        if "@" in scope or scope == ORG_MAIL
        else (
            phone_specs,
            mail_specs,
        )
    )
    return st.one_of(own, own, own, other).map(lambda spec: (scope, spec[1], spec[2]))


@dataclass(frozen=True)
class Change:
    """One store change: the new rows of some scopes, and the targets as they now are
    among the changed ones (missing: deleted), plus settings-only target changes."""

    rows_by_scope: dict[str, list[SnapshotRule]]
    targets: dict[str, Target | None]  # target id -> its new state (None: deleted)


def _target_state(draw: st.DrawFn, target_id: str) -> Target | None:
    if draw(st.integers(0, 3)) == 0:
        return None  # deleted (or never created)
    kind: TargetKind = "mailbox" if "@" in target_id else "number"
    return Target(kind, target_id, draw(modes), draw(st.booleans()), EPOCH, EPOCH)


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, Target], list[SnapshotRule], list[Change]]:
    """Initial targets and rows, then a few changes of a few scopes each."""
    serial = iter(range(1, 10_000))

    def rows_of(scope: str, max_size: int) -> list[SnapshotRule]:
        specs = draw(st.lists(_specs_for(scope), max_size=max_size))
        return [
            (
                next(serial),
                s,
                draw(actions),
                cast(MatchType, mt),
                t,
                draw(st.booleans()),
                draw(expiries),
            )
            for s, mt, t in specs
        ]

    targets = {tid: t for tid in TARGET_IDS if (t := _target_state(draw, tid)) is not None}
    initial = [row for scope in ALL_SCOPES for row in rows_of(scope, 6)]
    changes = []
    for _ in range(draw(st.integers(1, 6))):
        scopes = draw(st.lists(st.sampled_from(ALL_SCOPES), min_size=0, max_size=3, unique=True))
        rows_by_scope = {scope: rows_of(scope, 6) for scope in scopes}
        touched = {s for s in scopes if s in TARGET_IDS}
        # Settings-only changes of targets whose rules stay as they are.
        touched |= set(draw(st.lists(st.sampled_from(TARGET_IDS), max_size=2)))
        changes.append(Change(rows_by_scope, {tid: _target_state(draw, tid) for tid in touched}))
    return targets, initial, changes


def _queries(
    data: st.DataObject, rows: list[SnapshotRule]
) -> list[tuple[Sender, str, Family, bool, Sender | None]]:
    near: list[Sender] = [ANONYMOUS, INVALID]
    for _id, _scope, _action, mt, target, _sub, _exp in rows:
        if mt == "exact_email":
            near.append(email_sender(target))
        elif mt == "domain":
            near.append(email_sender(f"x@a.{target}"))
        elif mt in ("exact_number", "number_prefix"):
            near.append(number_sender(target + ("9" if mt == "number_prefix" else "")))
    senders = st.one_of(st.sampled_from(near), any_sender)
    recipients = st.sampled_from(MAIL_RECIPIENTS + PHONE_RECIPIENTS)
    families: st.SearchStrategy[Family] = st.sampled_from(("mail", "phone"))
    envelopes = st.one_of(st.none(), st.sampled_from(near), emails.map(email_sender))
    return data.draw(
        st.lists(
            st.tuples(senders, recipients, families, st.booleans(), envelopes),
            min_size=20,
            max_size=40,
        )
    )


@settings(max_examples=300, deadline=None)
@given(history=histories(), mail_mode=modes, phone_mode=modes, data=st.data())
def test_replace_scopes_agrees_with_a_full_compile(
    history: tuple[dict[str, Target], list[SnapshotRule], list[Change]],
    mail_mode: Mode,
    phone_mode: Mode,
    data: st.DataObject,
) -> None:
    """Applying scope changes one after another with RuleSet.replace_scopes gives the
    same decisions (and counts, targets, scopes_matching) as compiling the final rows."""
    targets, rows, changes = history
    rs = compile_rules(
        list(targets.values()), rows, mail_mode=mail_mode, phone_mode=phone_mode, version=1
    )
    by_scope: dict[str, list[SnapshotRule]] = {}
    for row in rows:
        by_scope.setdefault(row[1], []).append(row)
    for version, change in enumerate(changes, start=2):
        by_scope.update(change.rows_by_scope)
        for tid, state in change.targets.items():
            if state is None:
                targets.pop(tid, None)
            else:
                targets[tid] = state
        # What a store's scope_rules answers: the targets that exist among the changed
        # scopes (here also the settings-only ones).
        changed_targets = [
            targets[tid] for tid in {*change.rows_by_scope, *change.targets} if tid in targets
        ]
        # A deleted target whose scope did not change: the store marks its rules
        # deleted, which changes its scope too.
        gone = [tid for tid, state in change.targets.items() if state is None]
        rows_by_scope = dict(change.rows_by_scope)
        for tid in gone:
            rows_by_scope.setdefault(tid, by_scope.get(tid, []))
        rs = rs.replace_scopes(changed_targets, rows_by_scope, version=version)
        assert rs.version == version

    final_rows = [row for scope_rows in by_scope.values() for row in scope_rows]
    full = compile_rules(
        list(targets.values()), final_rows, mail_mode=mail_mode, phone_mode=phone_mode
    )
    assert rs.rule_count == full.rule_count
    assert rs.target_count == full.target_count
    for tid in TARGET_IDS:
        assert rs.target(tid) == full.target(tid)
    for scope in ALL_SCOPES:
        assert rs.scope_rule_count(scope) == full.scope_rule_count(scope)
    for sender, recipient, family, authenticated, envelope in _queries(data, final_rows):
        got, want = (
            decide(
                ruleset,
                sender,
                recipient,
                family,
                now=NOW,
                authenticated=authenticated,
                envelope=envelope,
            )
            for ruleset in (rs, full)
        )
        assert got == want
        assert scopes_matching(rs, sender, family, now=NOW) == scopes_matching(
            full, sender, family, now=NOW
        )


@dataclass
class StoredRule:
    scope: str
    match_type: MatchType
    match_target: str
    status: str  # active, paused, deleted
    action: Action
    sub: bool
    expires: float | None

    def row(self, rule_id: int) -> SnapshotRule:
        return (
            rule_id,
            self.scope,
            self.action,
            self.match_type,
            self.match_target,
            self.sub,
            self.expires,
        )

    def state(self, rule_id: int) -> RuleState:
        active = self.row(rule_id) if self.status == "active" else None
        return (rule_id, self.scope, self.match_type, self.match_target, active)


@settings(max_examples=300, deadline=None)
@given(mail_mode=modes, phone_mode=modes, data=st.data())
def test_patch_rules_agrees_with_a_full_compile(
    mail_mode: Mode, phone_mode: Mode, data: st.DataObject
) -> None:
    """Rule writes as a store makes them (one non-deleted rule per slot), applied with
    RuleSet.patch_rules rule by rule, some late and out of order (as notifications can
    be); when a patch finds a slot held by a rule whose change it has not seen yet it
    says so, and the scope is read whole. The result decides as a full compile does."""
    targets = [
        Target("mailbox" if "@" in tid else "number", tid, data.draw(modes), True, EPOCH, EPOCH)
        for tid in (*MAILBOXES, *NUMBERS)
    ]
    store: dict[int, StoredRule] = {}
    serial = iter(range(1, 100_000))

    def holder(scope: str, mt: str, target: str) -> int | None:
        for rid, r in store.items():
            slot = (r.scope, r.match_type, r.match_target)
            if slot == (scope, mt, target) and r.status != "deleted":
                return rid
        return None

    def active_rows() -> list[SnapshotRule]:
        return [r.row(rid) for rid, r in store.items() if r.status == "active"]

    def create(scope: str, mt: str, target: str) -> list[int]:
        if holder(scope, mt, target) is not None:
            return []  # DuplicateRule
        rid = next(serial)
        store[rid] = StoredRule(
            scope,
            cast(MatchType, mt),
            target,
            data.draw(st.sampled_from(("active", "active", "paused"))),
            data.draw(actions),
            data.draw(st.booleans()),
            data.draw(expiries),
        )
        return [rid]

    def write() -> list[int]:
        """One or two store writes; the ids of the rules they changed."""
        op = data.draw(st.integers(0, 3))
        live = sorted(rid for rid, r in store.items() if r.status != "deleted")
        if store and op == 0:  # change a rule
            rid = data.draw(st.sampled_from(sorted(store)))
            r = store[rid]
            status = data.draw(st.sampled_from(("active", "paused", "deleted")))
            restore = r.status == "deleted" and status != "deleted"
            if restore and holder(r.scope, r.match_type, r.match_target) is not None:
                return []  # DuplicateRule
            r.status = status
            r.action = data.draw(actions)
            r.expires = data.draw(expiries)
            return [rid]
        if live and op == 1:  # delete a rule, then create another in its slot
            rid = data.draw(st.sampled_from(live))
            old = store[rid]
            old.status = "deleted"
            return [rid, *create(old.scope, old.match_type, old.match_target)]
        return create(*data.draw(_specs_for(data.draw(st.sampled_from(ALL_SCOPES)))))

    for _ in range(data.draw(st.integers(0, 12))):
        write()
    rs = compile_rules(targets, active_rows(), mail_mode=mail_mode, phone_mode=phone_mode)
    pending: list[int] = []
    for _ in range(data.draw(st.integers(1, 12))):
        for _ in range(data.draw(st.integers(1, 3))):
            pending += write()
        late = data.draw(st.lists(st.sampled_from(pending), unique=True)) if pending else []
        if data.draw(st.booleans()):
            late = pending[:]  # everything heard of so far
        rs = _apply_states(rs, store, late)
        pending = [rid for rid in pending if rid not in late]
    rs = _apply_states(rs, store, pending)

    full = compile_rules(targets, active_rows(), mail_mode=mail_mode, phone_mode=phone_mode)
    assert rs.rule_count == full.rule_count
    for scope in ALL_SCOPES:
        assert rs.scope_rule_count(scope) == full.scope_rule_count(scope)
    for sender, recipient, family, authenticated, envelope in _queries(data, active_rows()):
        got, want = (
            decide(
                ruleset,
                sender,
                recipient,
                family,
                now=NOW,
                authenticated=authenticated,
                envelope=envelope,
            )
            for ruleset in (rs, full)
        )
        assert got == want


def _apply_states(rs: RuleSet, store: dict[int, StoredRule], ids: list[int]) -> RuleSet:
    """What the snapshot holder does with a batch of changed rules: patch them in as the
    store has them now; on a slot conflict read their scopes whole."""
    if not ids:
        return rs
    states = [store[rid].state(rid) for rid in ids]
    patched = rs.patch_rules(states, version=rs.version)
    if patched is not None:
        return patched
    scopes = {state[1] for state in states}
    rows = {
        scope: [r.row(rid) for rid, r in store.items() if r.scope == scope and r.status == "active"]
        for scope in scopes
    }
    return rs.replace_scopes(
        [t for t in rs._targets.values() if t.id in scopes], rows, version=rs.version
    )
