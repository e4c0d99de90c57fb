"""The review: policies over contacts that propose exact rules (SPEC §7).

``plan`` is pure: given contacts and the ``[[review.policies]]`` it says what the review
would do and why. ``apply`` writes the proposals as exact rules with source
``review:POLICY`` and one audit entry each (actor ``review:POLICY``). ``run_review``
reads the contacts from the store, plans, and applies when asked; the API
(``POST /v1/review``), the CLI (through the API) and the in-server schedule
(``[review] interval``) all go through it.

How a contact is judged:

* contacts first seen less than ``min_age_days`` ago are left alone;
* policies are tried in order and the first whose conditions all hold decides;
* ``state = "unset"`` (the default) is a condition: the contact has no exact rule in its
  scope (a paused or expired rule still counts as a rule: somebody made it). With
  ``state = "any"`` a policy also judges contacts that have one;
* a deciding policy proposes its action only when the contact's state differs from it,
  so that applying twice changes nothing the second time;
* conditions: ``channel`` (mail or phone), ``min_count``, ``min_dropped``, ``tld_in``
  (the sender's top-level domain), ``domain_in`` (the sender's domain or a parent of it),
  ``category_in``, ``number_type_in`` and ``country_in`` (phones; phonenumbers' number
  type and region). A policy with no conditions matches every contact. A condition that
  does not apply to a contact (``tld_in`` for a phone number) does not hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway import audit
from gateway.contacts import exact_rule_for
from gateway.errors import DuplicateRule
from gateway.models import ORG_SCOPES, Action, NewRule, Rule
from gateway.settings import ReviewPolicy, ReviewSettings
from gateway.store.base import STATE_OF_ACTION, Contact, ContactFilter, NewAudit, Store

__all__ = ["ApplyOutcome", "Proposal", "apply", "plan", "run_review"]

_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Proposal:
    """What one policy would do to one contact, and why."""

    contact: Contact
    policy_name: str
    action: Action
    reason: str

    @property
    def source(self) -> str:
        """The rule ``source`` and audit actor of this proposal: ``review:POLICY``."""
        return f"review:{self.policy_name}"


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """``outcome`` is ``created``, ``updated``, ``unchanged`` (the rule already says so)
    or ``failed`` (``detail`` says why)."""

    proposal: Proposal
    outcome: str
    rule_id: int | None = None
    detail: str | None = None


def _domain(contact: Contact) -> str | None:
    if contact.family != "mail" or contact.sender == "invalid":
        return None
    return contact.sender.rpartition("@")[2] or None


def _conditions(policy: ReviewPolicy, contact: Contact) -> list[str] | None:
    """The reasons the policy matches the contact, or None when a condition fails."""
    why: list[str] = []
    if policy.state == "unset":
        if contact.rule_id is not None:
            return None
    elif contact.state != "unset":
        why.append(f"currently {contact.state}")
    if policy.channel is not None:
        if contact.family != policy.channel:
            return None
        why.append(f"channel {policy.channel}")
    if policy.min_count is not None:
        if contact.count < policy.min_count:
            return None
        why.append(f"count {contact.count} >= {policy.min_count}")
    if policy.min_dropped is not None:
        if contact.dropped < policy.min_dropped:
            return None
        why.append(f"dropped {contact.dropped} >= {policy.min_dropped}")
    if policy.tld_in or policy.domain_in:
        domain = _domain(contact)
        if domain is None:
            return None
        if policy.tld_in:
            tld = domain.rpartition(".")[2]
            if tld not in policy.tld_in:
                return None
            why.append(f"top-level domain {tld}")
        if policy.domain_in:
            listed = next(
                (d for d in policy.domain_in if domain == d or domain.endswith("." + d)), None
            )
            if listed is None:
                return None
            why.append(f"domain {domain}" + ("" if listed == domain else f" under {listed}"))
    if policy.category_in:
        if contact.category not in policy.category_in:
            return None
        why.append(f"category {contact.category}")
    if policy.number_type_in:
        if contact.number_type not in policy.number_type_in:
            return None
        why.append(f"number type {contact.number_type}")
    if policy.country_in:
        if contact.region not in policy.country_in:
            return None
        why.append(f"country {contact.region}")
    return why


def plan(
    contacts: Iterable[Contact],
    policies: Sequence[ReviewPolicy],
    *,
    now: datetime,
    min_age_days: int,
    region: str = "US",
) -> list[Proposal]:
    """What the review would do to ``contacts`` (see the module docstring), ordered by
    scope and sender. Pure: no I/O, ``now`` is given. ``region`` is ``[phone]
    default_region`` (exact rules for short codes are written in it)."""
    newest = now - timedelta(days=min_age_days)
    out: list[Proposal] = []
    for contact in sorted(contacts, key=lambda c: (c.scope, c.sender)):
        if contact.first_seen > newest:
            continue
        for policy in policies:
            why = _conditions(policy, contact)
            if why is None:
                continue
            # The first matching policy decides, even when it has nothing to change.
            if contact.state != STATE_OF_ACTION[policy.action]:
                try:
                    exact_rule_for(contact.sender, contact.family, region)
                except ValueError:
                    break  # no exact rule can hold this sender
                reason = "; ".join(why) if why else "matches every contact"
                out.append(Proposal(contact, policy.name, policy.action, reason))
            break
    return out


def _in_force(rule: Rule, now: datetime) -> bool:
    return rule.status == "active" and (rule.expires_at is None or rule.expires_at > now)


async def apply(
    store: Store, proposals: Sequence[Proposal], *, now: datetime, region: str = "US"
) -> list[ApplyOutcome]:
    """Write each proposal as the contact's exact rule (source ``review:POLICY``): create
    it, or change the rule that holds the slot (action, and back to active without an
    expiry). One audit entry per rule written, actor ``review:POLICY``. A rule that
    already says what the proposal says is left alone (``unchanged``)."""
    outcomes: list[ApplyOutcome] = []
    entries: list[NewAudit] = []
    for p in proposals:
        c = p.contact
        try:
            match_type, target = exact_rule_for(c.sender, c.family, region)
        except ValueError as exc:
            outcomes.append(ApplyOutcome(p, "failed", detail=str(exc)))
            continue
        new = NewRule(
            scope=c.scope,
            action=p.action,
            match_type=match_type,
            match_target=target,
            note=f"{p.source}: {p.reason}"[:1000],
            source=p.source,
        )
        try:
            created = await store.create_rule(new)
        except DuplicateRule as dup:
            existing = await store.get_rule(dup.existing_rule_id)
            if existing is None:
                outcomes.append(ApplyOutcome(p, "failed", detail="the rule changed meanwhile"))
                continue
            if existing.action == p.action and _in_force(existing, now):
                outcomes.append(ApplyOutcome(p, "unchanged", existing.id))
                continue
            changes: dict[str, Any] = {"action": p.action, "status": "active"}
            if existing.expires_at is not None and existing.expires_at <= now:
                changes["expires_at"] = None
            updated = await store.update_rule(existing.id, changes)
            if updated is None:
                outcomes.append(ApplyOutcome(p, "failed", detail="the rule changed meanwhile"))
                continue
            entries.append(audit.rule_change(p.source, "rule.update", now, existing, updated))
            outcomes.append(ApplyOutcome(p, "updated", updated.id))
            continue
        entries.append(audit.rule_change(p.source, "rule.create", now, None, created))
        outcomes.append(ApplyOutcome(p, "created", created.id))
    await audit.record(store, entries)
    return outcomes


async def reviewable_contacts(store: Store, *, now: datetime, min_age_days: int) -> list[Contact]:
    """Every contact old enough to review whose scope still exists (an org list or a
    current target: contacts of a deleted target are kept but not ruled on)."""
    newest = now - timedelta(days=min_age_days)
    targets = {t.id for t in await store.all_targets()}
    out: list[Contact] = []
    offset = 0
    while True:
        # Oldest first, so that paging can stop at the first contact too young to review.
        page, total = await store.list_contacts(
            ContactFilter(), sort="first_seen", descending=False, limit=_PAGE, offset=offset
        )
        for contact in page:
            if contact.first_seen > newest:
                return out
            if contact.scope in ORG_SCOPES or contact.scope in targets:
                out.append(contact)
        offset += len(page)
        if not page or offset >= total:
            return out


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def proposal_json(p: Proposal) -> dict[str, Any]:
    c = p.contact
    return {
        "scope": c.scope,
        "sender": c.sender,
        "channel": c.family,
        "state": c.state,
        "rule": c.rule_id,
        "policy": p.policy_name,
        "action": p.action,
        "reason": p.reason,
        "count": c.count,
        "dropped": c.dropped,
        "first_seen": _iso(c.first_seen),
        "last_seen": _iso(c.last_seen),
    }


async def run_review(
    store: Store,
    settings: ReviewSettings,
    *,
    apply: bool,
    now: datetime,
    region: str = "US",
) -> dict[str, Any]:
    """Plan over the store's contacts and, with ``apply``, write the proposals.

    The answer: ``dry_run``, ``min_age_days``, ``policies`` (names, in order),
    ``reviewed`` (contacts old enough to judge), ``proposals`` (one row per proposed
    action: scope, sender, channel, state, rule, policy, action, reason, counts; with
    ``outcome`` and the ``rule`` written when applied) and ``written`` (rules created or
    changed; 0 for a dry run).
    """
    contacts = await reviewable_contacts(store, now=now, min_age_days=settings.min_age_days)
    proposals = plan(
        contacts, settings.policies, now=now, min_age_days=settings.min_age_days, region=region
    )
    rows = [proposal_json(p) for p in proposals]
    written = 0
    if apply:
        outcomes = await _apply(store, proposals, now=now, region=region)
        for row, result in zip(rows, outcomes, strict=True):
            row["outcome"] = result.outcome
            if result.rule_id is not None:
                row["rule"] = result.rule_id
            if result.detail is not None:
                row["detail"] = result.detail
        written = sum(1 for r in outcomes if r.outcome in ("created", "updated"))
    return {
        "dry_run": not apply,
        "min_age_days": settings.min_age_days,
        "policies": [p.name for p in settings.policies],
        "reviewed": len(contacts),
        "proposals": rows,
        "written": written,
    }


_apply = apply  # run_review's ``apply`` argument shadows the function
