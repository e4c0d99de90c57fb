"""Compile rule rows into an immutable ``RuleSet`` and decide events against it.

This module is the hot path of SenderGate and is pure: no I/O, no logging, no clock
(``now`` is passed in). Everything that can be worked out ahead of time is done once in
``compile_rules``; ``decide`` is a handful of dict lookups.

Decision (SPEC §3), for a sender S and a recipient R of family F (mail or phone):

1. Scopes: R's target scope (when R is a known target of family F) and F's org-wide list.
2. Candidates: rules in those scopes that match S and are not expired
   (``expires_at is not None and expires_at <= now`` is expired).
3. No candidate: the mode decides (blacklist → deliver, whitelist → drop), reason
   ``mode_default``. The mode is the target's ``filter_mode``, or the ruleset's
   ``mail_mode`` / ``phone_mode`` for an unknown recipient.
4. Otherwise the candidate with the greatest precedence key wins. The key, compared in
   this order, is:

   * specificity: an exact match (``exact_email``, ``exact_number``, ``anonymous``,
     ``invalid``) beats any domain or prefix match; between domain rules, more labels in
     the rule's ``match_target`` win; between prefix rules, the longer prefix wins;
   * scope: the target's own rule beats the org-wide one;
   * action: block beats mute beats allow.

   A full tie (only possible between a rule matched through the From address and one
   matched through the envelope sender) goes to the From address's rule.
5. allow → deliver, mute → mute, block → drop, reason ``rule``.

Matching:

* ``exact_email`` ↔ the value of an email sender; ``domain`` ↔ its domain by whole labels
  (the rule's domain itself always matches; its subdomains only with
  ``include_subdomains``; a one-label target such as ``xyz`` is a top-level domain);
  ``invalid`` ↔ the sender ``invalid``;
* ``exact_number`` ↔ the value of a phone (E.164) or token sender; ``number_prefix`` ↔ a
  phone value that starts with the prefix (never a token); ``anonymous`` ↔ the sender
  ``anonymous``.

Mail only:

* Envelope: block and mute rules match the From sender or the envelope sender; allow
  rules match only the From sender.
* Authentication: an allow rule matched through the From sender counts only when
  ``authenticated`` is true. Otherwise the event is decided as if every such allow rule
  were absent. ``Decision.unauthenticated_allow`` is set when that changed the winner,
  i.e. when the decision computed with ``authenticated=True`` would have been won by an
  allow rule (an allow that would have lost anyway on precedence does not set it).

Shadow: for a target with ``enforce = False`` a computed ``drop`` (by rule or by the
whitelist default) is delivered instead and the decision says ``would_drop``; ``action``,
``rule`` and ``reason`` stay the computed ones. ``mute`` is a delivery already and is left
as it is.

A recipient that is a known target of the *other* family (a mailbox given with family
``phone``) is treated like an unknown recipient of ``family``.

Layout of the compiled data, chosen for memory (about 130 bytes per rule in
``bench/decide.py``, key strings included): per scope there is one ``dict[str, int]`` per
match kind, keyed by the match value, whose values pack everything ``decide`` needs into
a single ``int``::

    rule_id << 13 | has_expiry << 12 | include_subdomains << 11 | key

    key (11 bits) = specificity << 3 | is_target_scope << 2 | action_rank

so the precedence of two candidates is compared as ``a & KEY_MASK`` against
``b & KEY_MASK``. Expiries live in a separate dict per scope (keyed by the packed value)
holding only the rules that have one.

Incremental updates: every scope's compiled data is self-contained (its tables, its
expiries, its prefix lengths), so ``RuleSet.replace_scopes`` builds a new RuleSet that
shares every compiled scope that did not change and compiles only the ones that did
(about 1.3 µs per rule of those scopes), and ``RuleSet.patch_rules`` changes a few rules
of one scope for the price of a copy of that scope's tables instead of a compile (one
rule of a 30,000-rule org list: under 1 ms). The per-recipient ``_Entry`` holds the
target's scope and the merged prefix lengths, not the org list (``decide`` takes that
from the RuleSet), so an org list change rebuilds no entry unless the org list's set of
prefix lengths moved, and then only the entries of targets with prefix rules of their
own. Either way the scope, target and entry dicts are copied: about 1 ms per 10,000
targets. (Measured with ``bench/decide.py``'s rule sets on the development VM;
``gateway.snapshot`` chooses between these and a full reload, ``docs/redis.md`` has the
end-to-end numbers.)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.models import (
    ORG_MAIL,
    ORG_PHONE,
    ORG_SCOPES,
    Action,
    Decision,
    Family,
    MatchType,
    Mode,
    Sender,
    Target,
    Verdict,
    family_of_scope,
)
from gateway.store.base import RuleState, SnapshotRule

__all__ = [
    "RuleSet",
    "compile_rules",
    "decide",
    "redundant_rule_ids",
    "scopes_matching",
]

# --- packed rule values ------------------------------------------------------------------

# Action rank doubles as the tie-break order: block > mute > allow.
_ALLOW = 0
_MUTE = 1
_BLOCK = 2
_RANK: Mapping[str, int] = {"allow": _ALLOW, "mute": _MUTE, "block": _BLOCK}
_ACTION_OF_RANK: tuple[Action, Action, Action] = ("allow", "mute", "block")
_VERDICT_OF_RANK: tuple[Verdict, Verdict, Verdict] = ("deliver", "mute", "drop")

_RANK_MASK = 0b11
_TARGET_BIT = 1 << 2
_SPEC_SHIFT = 3
_KEY_MASK = (1 << 11) - 1  # specificity, scope and action: the precedence key
_SUB_BIT = 1 << 11  # include_subdomains
_EXP_BIT = 1 << 12  # the rule has an expiry (look it up in its scope's ``expiry``)
_ID_SHIFT = 13

_EXACT_SPEC = 255  # above any label count or prefix length
_MAX_SPEC = 254


def _pack(rule_id: int, rank: int, spec: int, is_target: bool, sub: bool, expires: bool) -> int:
    return (
        rule_id << _ID_SHIFT
        | (_EXP_BIT if expires else 0)
        | (_SUB_BIT if sub else 0)
        | min(spec, _EXACT_SPEC) << _SPEC_SHIFT
        | (_TARGET_BIT if is_target else 0)
        | rank
    )


class _Scope:
    """The compiled rules of one scope. Built by ``_compile_into`` and ``_finish``, never
    changed after (RuleSets share unchanged scopes)."""

    __slots__ = (
        "anonymous",
        "count",
        "domain",
        "email",
        "expiry",
        "invalid",
        "lens",
        "number",
        "prefix",
    )

    def __init__(self) -> None:
        self.email: dict[str, int] = {}  # exact_email value → packed
        self.domain: dict[str, int] = {}  # domain (or TLD) → packed
        self.number: dict[str, int] = {}  # exact_number (E.164 or token) → packed
        self.prefix: dict[str, int] = {}  # number_prefix → packed
        self.expiry: dict[int, float] = {}  # packed → expires_at, for rules that have one
        self.lens: tuple[int, ...] = ()  # prefix lengths present, longest first
        self.anonymous = 0  # packed, 0 = no rule
        self.invalid = 0
        self.count = 0  # rules kept


_EMPTY = _Scope()  # stands in for "no rules in this scope"


@functools.lru_cache(maxsize=4096)
def _merged_lens(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The prefix lengths of two scopes, longest first. Targets share a few distinct
    combinations, so rebuilding every entry of a family asks for the same ones again."""
    return tuple(sorted(set(a) | set(b), reverse=True))


class _Entry:
    """What ``decide`` needs for one recipient (or for unknown recipients of a family)."""

    __slots__ = ("default_verdict", "enforce", "family", "lens", "mode", "scope")

    def __init__(
        self, family: Family, scope: _Scope, org_lens: tuple[int, ...], mode: Mode, enforce: bool
    ) -> None:
        self.family: Family = family
        self.scope = scope
        # Prefix lengths present in the target's scope or its family's org list, longest
        # first: the prefix walk tries only these. Empty when the target has no prefix
        # rules of its own (most): ``decide`` then takes the org list's. The org list
        # itself is not kept here, so that an org list change leaves entries alone.
        self.lens: tuple[int, ...] = _merged_lens(scope.lens, org_lens) if scope.lens else ()
        self.mode: Mode = mode
        self.enforce = enforce
        self.default_verdict: Verdict = "deliver" if mode == "blacklist" else "drop"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RuleSet:
    """An immutable, compiled snapshot of the targets and active rules.

    Build it with ``compile_rules``, or from another one with ``replace_scopes``; share it
    freely between tasks and threads.
    """

    version: int
    rule_count: int
    mail_mode: Mode
    phone_mode: Mode
    _targets: Mapping[str, Target]
    _entries: Mapping[str, _Entry]
    _defaults: tuple[_Entry, _Entry]  # (mail, phone) for unknown recipients
    _org_mail: _Scope
    _org_phone: _Scope
    _scopes: Mapping[str, _Scope]

    def target(self, target_id: str) -> Target | None:
        """The target with this (normalised) id, or None."""
        return self._targets.get(target_id)

    @property
    def target_count(self) -> int:
        return len(self._targets)

    def scope_rule_count(self, scope: str) -> int:
        """How many rules of ``scope`` this snapshot holds (0 for none)."""
        sc = self._scopes.get(scope)
        return 0 if sc is None else sc.count

    def with_version(self, version: int) -> RuleSet:
        """The same snapshot under another version number (shares everything)."""
        return dataclasses.replace(self, version=version)

    def replace_scopes(
        self,
        targets_changed: Iterable[Target],
        rows_by_scope: Mapping[str, Iterable[SnapshotRule]],
        *,
        version: int,
    ) -> RuleSet:
        """A new RuleSet in which each scope named in ``rows_by_scope`` holds exactly
        the given active rows (an empty iterable: no rules left in it), sharing every
        other scope's compiled data with this one. The same as ``compile_rules`` of the
        whole, changed rule set (``tests/test_rules_property.py`` checks it).

        ``targets_changed`` are the targets that exist among the changed scopes, with
        their current settings (mode, enforce); a known target whose scope is in
        ``rows_by_scope`` but that is not among them has been deleted. A target may also
        be given without its scope (a settings change only): its rules stay. Entries of
        the changed targets are rebuilt (see the module docstring for the org lists).

        Raises ``ValueError`` as ``compile_rules`` does, or when a row's scope is not
        one of ``rows_by_scope``'s keys.
        """
        return _replace_scopes(self, targets_changed, rows_by_scope, version)

    def patch_rules(self, states: Iterable[RuleState], *, version: int) -> RuleSet | None:
        """A new RuleSet in which each rule of ``states`` (``Store.rule_states``) is as
        stated: in force with its row when it has one, else gone; every scope none of
        them is in is shared. For a large scope (an org list) this costs a copy of its
        tables instead of reading and compiling all its rules.

        None when an active rule's slot is held by another rule here: a change this
        snapshot has not seen yet (that rule's deletion); the caller then reads the scope
        whole (``replace_scopes``). Targets are left as they are.
        """
        return _patch_rules(self, states, version)

    def __repr__(self) -> str:
        return (
            f"RuleSet(version={self.version}, rule_count={self.rule_count}, "
            f"targets={len(self._targets)}, scopes={len(self._scopes)})"
        )


# --- compile -----------------------------------------------------------------------------


def _labels(domain: str) -> int:
    return domain.count(".") + 1


def compile_rules(
    targets: Iterable[Target],
    rules: Iterable[SnapshotRule],
    *,
    mail_mode: Mode = "blacklist",
    phone_mode: Mode = "blacklist",
    version: int = 0,
) -> RuleSet:
    """Compile targets and *active* rule rows into a ``RuleSet``.

    ``rules`` are ``SnapshotRule`` rows whose ``match_target`` is already normalised.
    ``mail_mode`` / ``phone_mode`` decide for recipients that are not known targets.

    The store keeps at most one rule per (scope, match_type, match_target); should two
    rows share that slot anyway, the one with the stronger action (block > mute > allow,
    then the earlier row) is kept and the other is left out of ``rule_count``.

    Raises ``ValueError`` for an unknown action or match_type, or a negative rule id.
    """
    scopes: dict[str, _Scope] = {}
    _compile_into(scopes, rules)
    count = 0
    for sc in scopes.values():
        _finish(sc)
        count += sc.count

    org_mail = scopes.get(ORG_MAIL, _EMPTY)
    org_phone = scopes.get(ORG_PHONE, _EMPTY)
    target_map: dict[str, Target] = {}
    entries: dict[str, _Entry] = {}
    for t in targets:
        target_map[t.id] = t
        entries[t.id] = _entry_for(t, scopes, org_mail, org_phone)
    return RuleSet(
        version=version,
        rule_count=count,
        mail_mode=mail_mode,
        phone_mode=phone_mode,
        _targets=target_map,
        _entries=entries,
        _defaults=(
            _Entry("mail", _EMPTY, (), mail_mode, True),
            _Entry("phone", _EMPTY, (), phone_mode, True),
        ),
        _org_mail=org_mail,
        _org_phone=org_phone,
        _scopes=scopes,
    )


def _compile_into(scopes: dict[str, _Scope], rules: Iterable[SnapshotRule]) -> None:
    """Compile rows into ``scopes`` (scope string → ``_Scope``, made on first use). Call
    ``_finish`` on each scope afterwards."""
    # Rows from a store carry one string object per row; equal strings (a domain blocked
    # in many scopes, the scope strings) are made to share one object.
    canon: dict[str, str] = {}
    for rule_id, scope, action, match_type, match_target, sub, expires_at in rules:
        rank = _RANK.get(action)
        if rank is None:
            raise ValueError(f"rule {rule_id}: unknown action {action!r}")
        if rule_id < 0:
            raise ValueError(f"rule {rule_id}: negative id")
        sc = scopes.get(scope)
        if sc is None:
            sc = scopes[canon.setdefault(scope, scope)] = _Scope()
        is_target = scope not in ORG_SCOPES
        has_exp = expires_at is not None
        table: dict[str, int] | None
        if match_type == "exact_email":
            table, spec = sc.email, _EXACT_SPEC
        elif match_type == "domain":
            table, spec = sc.domain, min(_labels(match_target), _MAX_SPEC)
        elif match_type == "exact_number":
            table, spec = sc.number, _EXACT_SPEC
        elif match_type == "number_prefix":
            table, spec = sc.prefix, min(len(match_target), _MAX_SPEC)
        elif match_type in ("anonymous", "invalid"):
            table, spec = None, _EXACT_SPEC
        else:
            raise ValueError(f"rule {rule_id}: unknown match_type {match_type!r}")
        packed = _pack(rule_id, rank, spec, is_target, sub, has_exp)
        if table is None:
            old = sc.anonymous if match_type == "anonymous" else sc.invalid
        else:
            key = canon.setdefault(match_target, match_target)
            old = table.get(key, 0)
        if old:
            if old & _RANK_MASK >= rank:
                continue  # a duplicate slot: keep the stronger (or earlier) rule
            sc.expiry.pop(old, None)
        if table is None:
            if match_type == "anonymous":
                sc.anonymous = packed
            else:
                sc.invalid = packed
        else:
            table[key] = packed
        if expires_at is not None:
            sc.expiry[packed] = float(expires_at)


def _finish(sc: _Scope) -> None:
    """Work out a freshly compiled scope's prefix lengths and rule count."""
    sc.lens = tuple(sorted({len(p) for p in sc.prefix}, reverse=True))
    sc.count = (
        len(sc.email)
        + len(sc.domain)
        + len(sc.number)
        + len(sc.prefix)
        + (1 if sc.anonymous else 0)
        + (1 if sc.invalid else 0)
    )


def _entry_for(
    t: Target, scopes: Mapping[str, _Scope], org_mail: _Scope, org_phone: _Scope
) -> _Entry:
    if t.kind == "mailbox":
        return _Entry("mail", scopes.get(t.id, _EMPTY), org_mail.lens, t.filter_mode, t.enforce)
    return _Entry("phone", scopes.get(t.id, _EMPTY), org_phone.lens, t.filter_mode, t.enforce)


def _replace_scopes(
    rs: RuleSet,
    targets_changed: Iterable[Target],
    rows_by_scope: Mapping[str, Iterable[SnapshotRule]],
    version: int,
) -> RuleSet:
    changed = set(rows_by_scope)
    fresh: dict[str, _Scope] = {}
    _compile_into(fresh, itertools.chain.from_iterable(rows_by_scope.values()))
    stray = fresh.keys() - changed
    if stray:
        raise ValueError(f"a row of scope {min(stray)!r} is not under its own scope")
    for sc in fresh.values():
        _finish(sc)
    return _assemble(rs, fresh, changed, list(targets_changed), True, version)


def _patch_rules(rs: RuleSet, states: Iterable[RuleState], version: int) -> RuleSet | None:
    by_scope: dict[str, list[RuleState]] = {}
    for state in states:
        by_scope.setdefault(state[1], []).append(state)
    patched: dict[str, _Scope] = {}
    for name, group in by_scope.items():
        sc = _copy(rs._scopes.get(name, _EMPTY))
        for rule_id, _scope, match_type, match_target, _row in group:
            _remove(sc, rule_id, match_type, match_target)
        # The rows that are active, compiled as compile_rules would, then merged in.
        added: dict[str, _Scope] = {}
        _compile_into(added, (row for *_, row in group if row is not None))
        if added.keys() - {name}:
            raise ValueError(f"a rule of scope {min(added.keys() - {name})!r} is not in it")
        new = added.get(name)
        if new is not None and not _merge(sc, new):
            return None
        _finish(sc)
        if sc.count:
            patched[name] = sc
    return _assemble(rs, patched, set(by_scope), [], False, version)


def _copy(old: _Scope) -> _Scope:
    sc = _Scope()
    sc.email = dict(old.email)
    sc.domain = dict(old.domain)
    sc.number = dict(old.number)
    sc.prefix = dict(old.prefix)
    sc.expiry = dict(old.expiry)
    sc.anonymous = old.anonymous
    sc.invalid = old.invalid
    return sc


def _table(sc: _Scope, match_type: str) -> dict[str, int] | None:
    if match_type == "exact_email":
        return sc.email
    if match_type == "domain":
        return sc.domain
    if match_type == "exact_number":
        return sc.number
    if match_type == "number_prefix":
        return sc.prefix
    if match_type in ("anonymous", "invalid"):
        return None
    raise ValueError(f"unknown match_type {match_type!r}")


def _remove(sc: _Scope, rule_id: int, match_type: str, match_target: str) -> None:
    """Take the rule out of its slot, if it is the one that holds it."""
    table = _table(sc, match_type)
    if table is not None:
        p = table.get(match_target, 0)
        if p and p >> _ID_SHIFT == rule_id:
            del table[match_target]
            sc.expiry.pop(p, None)
    elif match_type == "anonymous":
        if sc.anonymous and sc.anonymous >> _ID_SHIFT == rule_id:
            sc.expiry.pop(sc.anonymous, None)
            sc.anonymous = 0
    elif sc.invalid and sc.invalid >> _ID_SHIFT == rule_id:
        sc.expiry.pop(sc.invalid, None)
        sc.invalid = 0


def _merge(sc: _Scope, new: _Scope) -> bool:
    """Put ``new``'s rules into ``sc``; False when a slot is held by another rule (this
    snapshot has not seen that rule go yet: the caller reads the scope whole)."""
    for table, added in (
        (sc.email, new.email),
        (sc.domain, new.domain),
        (sc.number, new.number),
        (sc.prefix, new.prefix),
    ):
        for key, p in added.items():
            held = table.get(key, 0)
            if held and held >> _ID_SHIFT != p >> _ID_SHIFT:
                return False
            table[key] = p
    for name in ("anonymous", "invalid"):
        p = getattr(new, name)
        held = getattr(sc, name)
        if p:
            if held and held >> _ID_SHIFT != p >> _ID_SHIFT:
                return False
            setattr(sc, name, p)
    sc.expiry.update(new.expiry)
    return True


def _assemble(
    rs: RuleSet,
    compiled: Mapping[str, _Scope],
    changed: set[str],
    given: list[Target],
    targets_replaced: bool,
    version: int,
) -> RuleSet:
    """``rs`` with each scope in ``changed`` replaced by its ``compiled`` version (finished;
    a scope missing from ``compiled`` is empty now), sharing every other scope, and the
    entries that point at a changed scope rebuilt. ``targets_replaced``: the targets of
    the changed scopes are ``given`` (a known one that is not has been deleted); else
    targets are as they were, plus ``given``."""
    scopes = dict(rs._scopes)
    count = rs.rule_count
    for name in changed:
        old = scopes.pop(name, None)
        if old is not None:
            count -= old.count
    for name, sc in compiled.items():
        scopes[name] = sc
        count += sc.count

    targets = dict(rs._targets)
    entries = dict(rs._entries)
    rebuild = list(given)
    for name in changed:
        if targets_replaced:
            if targets.pop(name, None) is not None:  # gone, unless given
                del entries[name]
        elif name in targets:
            rebuild.append(targets[name])
    for t in given:
        targets[t.id] = t

    org_mail = scopes.get(ORG_MAIL, _EMPTY)
    org_phone = scopes.get(ORG_PHONE, _EMPTY)
    mail_lens_changed = org_mail.lens != rs._org_mail.lens
    phone_lens_changed = org_phone.lens != rs._org_phone.lens
    if mail_lens_changed or phone_lens_changed:
        # The entries of targets with prefix rules of their own merge the org list's
        # prefix lengths into theirs: rebuild those of the family whose lengths moved.
        for tid, e in entries.items():
            if e.lens and (mail_lens_changed if e.family == "mail" else phone_lens_changed):
                rebuild.append(targets[tid])
    for t in rebuild:
        entries[t.id] = _entry_for(t, scopes, org_mail, org_phone)
    return RuleSet(
        version=version,
        rule_count=count,
        mail_mode=rs.mail_mode,
        phone_mode=rs.phone_mode,
        _targets=targets,
        _entries=entries,
        _defaults=rs._defaults,
        _org_mail=org_mail,
        _org_phone=org_phone,
        _scopes=scopes,
    )


# --- decide ------------------------------------------------------------------------------


def _walk(
    t: _Scope,
    o: _Scope,
    lens: tuple[int, ...],
    s: Sender,
    now: float,
    allow_ok: bool,
) -> int:
    """The winning packed rule for one sender over a target scope ``t`` and an org scope
    ``o`` (0 when nothing matches).

    Candidates are visited from most to least specific, the target before the org at
    each level, so the first usable one is the winner. ``allow_ok=False`` skips allow
    rules (unauthenticated From, envelope sender). ``lens`` are the prefix lengths
    present in ``t`` or ``o``, longest first.
    """
    kind = s.kind
    value = s.value
    if kind == "email":
        p = t.email.get(value, 0)
        if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and t.expiry[p] <= now):
            return p
        p = o.email.get(value, 0)
        if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and o.expiry[p] <= now):
            return p
        td = t.domain
        od = o.domain
        if not td and not od:
            return 0
        d = s.domain
        if d is None:
            d = value[value.rfind("@") + 1 :]
        sub_needed = 0  # the sender's own domain matches with or without include_subdomains
        while True:
            p = td.get(d, 0)
            if (
                p
                and (p & _SUB_BIT or not sub_needed)
                and (allow_ok or p & _RANK_MASK)
                and not (p & _EXP_BIT and t.expiry[p] <= now)
            ):
                return p
            p = od.get(d, 0)
            if (
                p
                and (p & _SUB_BIT or not sub_needed)
                and (allow_ok or p & _RANK_MASK)
                and not (p & _EXP_BIT and o.expiry[p] <= now)
            ):
                return p
            i = d.find(".")
            if i < 0:
                return 0
            d = d[i + 1 :]
            sub_needed = 1
    if kind == "phone" or kind == "token":
        p = t.number.get(value, 0)
        if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and t.expiry[p] <= now):
            return p
        p = o.number.get(value, 0)
        if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and o.expiry[p] <= now):
            return p
        if kind == "token" or not lens:
            return 0  # tokens are matched only by exact_number
        n = len(value)
        tp = t.prefix
        op = o.prefix
        for length in lens:
            if length > n:
                continue
            k = value[:length]
            p = tp.get(k, 0)
            if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and t.expiry[p] <= now):
                return p
            p = op.get(k, 0)
            if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and o.expiry[p] <= now):
                return p
        return 0
    if kind == "anonymous":
        p, q = t.anonymous, o.anonymous
    elif kind == "invalid":
        p, q = t.invalid, o.invalid
    else:
        return 0
    if p and (allow_ok or p & _RANK_MASK) and not (p & _EXP_BIT and t.expiry[p] <= now):
        return p
    if q and (allow_ok or q & _RANK_MASK) and not (q & _EXP_BIT and o.expiry[q] <= now):
        return q
    return 0


def decide(
    rs: RuleSet,
    sender: Sender,
    recipient: str,
    family: Family,
    *,
    now: float,
    authenticated: bool = True,
    envelope: Sender | None = None,
) -> Decision:
    """Decide one event: ``sender`` (the From sender for mail) writing to ``recipient``
    (a normalised target id) in ``family``, at epoch time ``now``.

    ``authenticated`` says whether the From domain passed DMARC / aligned SPF or DKIM
    (mail only); ``envelope`` is the SMTP MAIL FROM sender (mail only). See the module
    docstring for the exact rules.
    """
    e = rs._entries.get(recipient)
    if e is None or e.family != family:
        # A recipient of the other family is treated like an unknown one.
        e = rs._defaults[0] if family == "mail" else rs._defaults[1]
    t = e.scope
    o = rs._org_mail if family == "mail" else rs._org_phone
    lens = e.lens or o.lens
    best = _walk(t, o, lens, sender, now, True)
    unauth = False
    if family == "mail":
        env = 0
        if envelope is not None and (
            envelope.value != sender.value or envelope.kind != sender.kind
        ):
            env = _walk(t, o, lens, envelope, now, False)
            # Ties go to the From rule: the envelope must be strictly stronger.
            if env and (not best or env & _KEY_MASK > best & _KEY_MASK):
                best = env
        if best and not authenticated and not best & _RANK_MASK:
            # The winner is an allow rule, necessarily matched through the From sender:
            # decide again without the From sender's allow rules.
            unauth = True
            best = _walk(t, o, lens, sender, now, False)
            if env and (not best or env & _KEY_MASK > best & _KEY_MASK):
                best = env

    if best:
        rank = best & _RANK_MASK
        verdict = _VERDICT_OF_RANK[rank]
        if rank == _BLOCK and not e.enforce:
            return Decision(
                "deliver",
                best >> _ID_SHIFT,
                "rule",
                e.mode,
                sender.value,
                recipient,
                family,
                "block",
                True,
                unauth,
            )
        return Decision(
            verdict,
            best >> _ID_SHIFT,
            "rule",
            e.mode,
            sender.value,
            recipient,
            family,
            _ACTION_OF_RANK[rank],
            False,
            unauth,
        )
    verdict = e.default_verdict
    would_drop = False
    if verdict == "drop" and not e.enforce:
        verdict = "deliver"
        would_drop = True
    return Decision(
        verdict,
        None,
        "mode_default",
        e.mode,
        sender.value,
        recipient,
        family,
        None,
        would_drop,
        unauth,
    )


def scopes_matching(
    rs: RuleSet, sender: Sender, family: Family, *, now: float
) -> list[tuple[str, int, Action]]:
    """For every scope of ``family`` holding a rule that matches ``sender`` (and has not
    expired at ``now``), that scope's winning ``(scope, rule_id, action)``.

    Each scope is judged on its own rules with the usual precedence; email senders are
    treated as authenticated. The org-wide list comes first, then targets by scope
    string. This scans every scope: it is for the admin API, not the hot path.
    """
    out: list[tuple[str, int, Action]] = []
    org = ORG_MAIL if family == "mail" else ORG_PHONE
    names = sorted(s for s in rs._scopes if s != org and family_of_scope(s) == family)
    if org in rs._scopes:
        names.insert(0, org)
    for name in names:
        sc = rs._scopes[name]
        p = _walk(sc, _EMPTY, sc.lens, sender, now, True)
        if p:
            out.append((name, p >> _ID_SHIFT, _ACTION_OF_RANK[p & _RANK_MASK]))
    return out


# --- redundancy --------------------------------------------------------------------------


def _suffixes(domain: str) -> Iterable[str]:
    """``a.b.c`` → ``a.b.c``, ``b.c``, ``c``."""
    while True:
        yield domain
        i = domain.find(".")
        if i < 0:
            return
        domain = domain[i + 1 :]


class _Coverage:
    """An index of the sender sets covered by a group of rules, to test overlaps."""

    def __init__(self, rows: Iterable[SnapshotRule]) -> None:
        self.emails: set[str] = set()
        self.email_domains: set[str] = set()  # domains of exact_email targets
        self.domains: dict[str, bool] = {}  # domain → include_subdomains (any row)
        self.under: set[str] = set()  # every label-suffix of an email or rule domain
        self.numbers: set[str] = set()
        self.prefixes: set[str] = set()
        self.number_heads: set[str] = set()  # every leading substring of numbers/prefixes
        self.anonymous = False
        self.invalid = False
        for _id, _scope, _action, mt, target, sub, _exp in rows:
            if mt == "exact_email":
                self.emails.add(target)
                d = target[target.rfind("@") + 1 :]
                self.email_domains.add(d)
                self.under.update(_suffixes(d))
            elif mt == "domain":
                self.domains[target] = self.domains.get(target, False) or sub
                self.under.update(_suffixes(target))
            elif mt in ("exact_number", "number_prefix"):
                (self.numbers if mt == "exact_number" else self.prefixes).add(target)
                self.number_heads.update(target[:i] for i in range(1, len(target) + 1))
            elif mt == "anonymous":
                self.anonymous = True
            elif mt == "invalid":
                self.invalid = True

    def _domain_rule_covers(self, domain: str) -> bool:
        """Some domain rule covers every address at ``domain``."""
        for i, d in enumerate(_suffixes(domain)):
            sub = self.domains.get(d)
            if sub is not None and (i == 0 or sub):
                return True
        return False

    def overlaps(self, mt: MatchType, target: str, sub: bool) -> bool:
        """Some sender matched by the rule (mt, target, sub) is also matched here."""
        if mt == "exact_email":
            d = target[target.rfind("@") + 1 :]
            return target in self.emails or self._domain_rule_covers(d)
        if mt == "domain":
            if self._domain_rule_covers(target):
                return True
            if sub:
                return target in self.under  # an email or a domain rule inside `target`
            return target in self.email_domains or target in self.domains
        if mt == "exact_number":
            if target in self.numbers:
                return True
            return any(target[:i] in self.prefixes for i in range(1, len(target) + 1))
        if mt == "number_prefix":
            if target in self.number_heads:
                return True  # a number or a longer (or equal) prefix inside it
            return any(target[:i] in self.prefixes for i in range(1, len(target)))
        if mt == "anonymous":
            return self.anonymous
        if mt == "invalid":
            return self.invalid
        return False


def redundant_rule_ids(
    target_rules: Iterable[SnapshotRule],
    org_rules: Iterable[SnapshotRule],
    new_mode: Mode,
) -> list[int]:
    """The ids (ascending) of a target's rules that the filter mode ``new_mode`` makes
    redundant, for the API's ``filter_mode_change_notice``.

    Each rule matches a set of senders (an address, a domain with or without its
    subdomains, a number, the numbers under a prefix, ``anonymous``, ``invalid``); two
    rules *overlap* when some sender is matched by both.

    * whitelist: a target **block** rule is redundant when it overlaps no allow or mute
      rule in the target's scope or the org list. Senders that no allow/mute rule matches
      are dropped by the mode anyway, so the block changes nothing. (Mute counts because
      a muted sender is still delivered.)
    * blacklist: a target **allow** rule is redundant when it overlaps no block or mute
      rule in the target's scope or the org list: the mode delivers those senders anyway.

    The test is deliberately conservative: it ignores precedence, expiry and mail
    authentication, so a rule is called redundant only when no sender it matches is
    matched by any rule of the other kind. For example, with a block of ``spam.example``
    in whitelist mode, an allow of ``spam.example``, of a parent such as ``example`` or of
    anything inside it (``a@spam.example``, ``x.spam.example``) keeps the block useful.
    Mute rules are never reported.
    """
    own = list(target_rules)
    others = own + list(org_rules)
    if new_mode == "whitelist":
        subject, counter = "block", ("allow", "mute")
    else:
        subject, counter = "allow", ("block", "mute")
    cover = _Coverage(r for r in others if r[2] in counter)
    return sorted(r[0] for r in own if r[2] == subject and not cover.overlaps(r[3], r[4], r[5]))
